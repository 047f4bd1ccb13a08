//! `--help` explains every flag and its environment variable, but never
//! prints the values of the ones that may carry passwords.

use std::process::Command;

#[test]
fn help_never_prints_the_data_store_urls_of_the_environment() {
    for subcommand in ["run", "seed", "redrive"] {
        let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .args([subcommand, "--help"])
            .env("REDIS_URL", "redis://:redis-secret@redis:6379")
            .env("AMQP_URL", "amqp://user:amqp-secret@rabbitmq:5672/%2f")
            .env(
                "DATABASE_URL",
                "postgres://user:pg-secret@postgresql/flashsale",
            )
            .env("CONFIRM_TOKEN", "confirm-secret-0123456789")
            .output()
            .unwrap_or_else(|e| panic!("cannot run the operator: {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{subcommand} --help: {text}");
        assert!(
            ["REDIS_URL", "AMQP_URL", "DATABASE_URL"]
                .iter()
                .any(|var| text.contains(&format!("[env: {var}]"))),
            "{subcommand} names no data store variable: {text}"
        );
        for secret in ["redis-secret", "amqp-secret", "pg-secret", "confirm-secret"] {
            assert!(
                !text.contains(secret),
                "{subcommand} --help printed {secret}:\n{text}"
            );
        }
    }
}
