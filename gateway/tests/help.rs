//! The gateway's `--help` names the variables that carry secrets but never
//! prints their values from the environment.

use std::process::Command;

#[test]
fn help_never_prints_secrets_of_the_environment() {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-gateway"))
        .arg("--help")
        .env("REDIS_URL", "redis://:redis-secret@redis:6379")
        .env("AMQP_URL", "amqp://user:amqp-secret@rabbitmq:5672/%2f")
        .env("CONFIRM_TOKEN", "confirm-secret-0123456789")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the gateway: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for var in ["REDIS_URL", "AMQP_URL", "CONFIRM_TOKEN"] {
        assert!(text.contains(&format!("[env: {var}]")), "{var}: {text}");
    }
    for secret in ["redis-secret", "amqp-secret", "confirm-secret"] {
        assert!(!text.contains(secret), "--help printed {secret}:\n{text}");
    }
}

#[test]
fn a_short_confirm_token_is_refused_without_being_repeated() {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-gateway"))
        .args(["--sale", "shop/drop", "--confirm-token", "tiny-s3cret"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run the gateway: {e}"));
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("16 to 4096 characters"), "{text}");
    assert!(!text.contains("tiny-s3cret"), "{text}");
}
