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

/// The environment variables a `--help` text names.
fn env_vars(help: &str) -> Vec<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split([']', '=']).next())
        .map(str::to_owned)
        .collect()
}

/// Every environment variable a binary takes is in the configuration
/// reference's table, so the table cannot fall behind the flags.
#[test]
fn every_environment_variable_is_in_the_configuration_table() {
    use clap::CommandFactory;
    let table =
        std::fs::read_to_string(flashsale_harness::repo_root().join("docs/configuration.md"))
            .unwrap_or_else(|e| panic!("cannot read docs/configuration.md: {e}"));
    let mut helps = vec![
        (
            "flashsale-gateway".to_owned(),
            flashsale_gateway::Config::command()
                .render_long_help()
                .to_string(),
        ),
        (
            "flashsale-worker".to_owned(),
            flashsale_worker::Config::command()
                .render_long_help()
                .to_string(),
        ),
    ];
    for subcommand in ["run", "seed", "redrive"] {
        let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .args([subcommand, "--help"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run the operator: {e}"));
        helps.push((
            format!("flashsale-operator {subcommand}"),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ));
    }
    for (binary, help) in helps {
        let vars = env_vars(&help);
        assert!(vars.len() > 5, "{binary} names few variables: {help}");
        for var in vars {
            assert!(
                table.contains(&format!("`{var}`")),
                "{binary} takes {var}, which the table of docs/configuration.md does not name"
            );
        }
    }
}
