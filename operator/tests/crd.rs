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

/// Every field of the spec (two levels deep) and of the status is in the
/// reference, docs/flashsale.md, so the reference cannot fall behind the
/// CRD.
#[test]
fn the_reference_names_every_field_of_the_crd() {
    let crd = flashsale_api::sale::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    let props = |s: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps| {
        s.properties.clone().unwrap_or_default()
    };
    let top = props(schema);
    let mut fields = Vec::new();
    for (name, spec_field) in props(&top["spec"]) {
        let inner = props(&spec_field);
        if inner.is_empty() {
            fields.push(name.clone());
        }
        for sub in inner.keys() {
            fields.push(format!("{name}.{sub}"));
        }
    }
    for name in props(&top["status"]).keys() {
        fields.push(name.clone());
    }
    let reference =
        std::fs::read_to_string(flashsale_harness::repo_root().join("docs/flashsale.md"))
            .expect("docs/flashsale.md");
    let missing: Vec<&String> = fields
        .iter()
        .filter(|f| !reference.contains(&format!("`{f}`")))
        .collect();
    assert!(fields.len() > 30, "{fields:?}");
    assert!(
        missing.is_empty(),
        "docs/flashsale.md does not name {missing:?}"
    );
}
