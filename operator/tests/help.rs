//! `--help` explains every flag and its environment variable, but never
//! prints the values of the ones that may carry passwords.

use std::process::Command;

#[test]
fn help_never_prints_the_data_store_urls_of_the_environment() {
    for subcommand in ["run", "local", "seed", "redrive"] {
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

/// Every flag of a binary (subcommand) with its environment variable,
/// the hidden ones too, and whether `--help` shows it.
fn flags(cmd: &clap::Command) -> Vec<(String, Option<String>, bool)> {
    cmd.get_arguments()
        .filter(|a| a.get_long().is_some())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| {
            (
                format!("--{}", a.get_long().unwrap_or_default()),
                a.get_env().map(|e| e.to_string_lossy().into_owned()),
                !a.is_hide_set(),
            )
        })
        .collect()
}

fn binaries() -> Vec<(String, clap::Command)> {
    use clap::CommandFactory;
    let mut all = vec![
        (
            "flashsale-gateway".to_owned(),
            flashsale_gateway::Config::command(),
        ),
        (
            "flashsale-worker".to_owned(),
            flashsale_worker::Config::command(),
        ),
    ];
    let operator = flashsale_operator::cli::Cli::command();
    for sub in operator.get_subcommands() {
        all.push((
            format!("flashsale-operator {}", sub.get_name()),
            sub.clone(),
        ));
    }
    all
}

/// Every environment variable a binary takes, hidden flags included, is in
/// the configuration reference's table, so the table cannot fall behind
/// the flags.
#[test]
fn every_environment_variable_is_in_the_configuration_table() {
    let table =
        std::fs::read_to_string(flashsale_harness::repo_root().join("docs/configuration.md"))
            .unwrap_or_else(|e| panic!("cannot read docs/configuration.md: {e}"));
    for (binary, cmd) in binaries() {
        let vars: Vec<String> = flags(&cmd)
            .into_iter()
            .filter_map(|(_, env, _)| env)
            .collect();
        if binary.ends_with(" crd") {
            continue;
        }
        assert!(vars.len() > 2, "{binary} names few variables: {vars:?}");
        for var in vars {
            assert!(
                table.contains(&format!("`{var}`")),
                "{binary} takes {var}, which the table of docs/configuration.md does not name"
            );
        }
    }
}

/// `--help` stays short: what a user sets from a FlashSale, the chart or
/// the command line. Tuning the benchmark and the tests turn is hidden
/// (and documented in docs/configuration.md).
#[test]
fn no_binary_shows_more_than_eighteen_flags() {
    for (binary, cmd) in binaries() {
        let visible: Vec<String> = flags(&cmd)
            .into_iter()
            .filter(|(_, _, shown)| *shown)
            .map(|(flag, _, _)| flag)
            .collect();
        println!("{binary}: {} visible flags", visible.len());
        assert!(
            visible.len() <= 18,
            "{binary} shows {} flags: {visible:?}",
            visible.len()
        );
    }
}
