//! The checked-in CRD is exactly what the Rust types generate.

#[test]
fn checked_in_crd_matches_the_types() {
    let generated = flashsale_operator::crd_yaml().expect("renders");
    let path = flashsale_harness::repo_root().join("crds/flashsale.yaml");
    let on_disk = std::fs::read_to_string(path).expect("crds/flashsale.yaml exists");
    assert!(
        generated == on_disk,
        "crds/flashsale.yaml is stale; run `cargo run -p flashsale-operator -- crd > crds/flashsale.yaml`"
    );
}
