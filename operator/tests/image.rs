//! The image as a user runs it: built by `scripts/image` (which
//! `scripts/test` runs first and names in `FLASHSALE_TEST_IMAGE`), run with
//! podman as its own user 65532 on a read-only root filesystem. The
//! operator answers `--help`; a gateway and a worker from the image serve a
//! seeded sale on the loopback stores: one purchase is accepted and stored.

use flashsale_harness::{Env, amqp_url, buy, eventually, http, open_sale};
use std::process::Output;
use std::time::Duration;

/// The image to run, or how to get it.
fn image() -> anyhow::Result<String> {
    std::env::var("FLASHSALE_TEST_IMAGE").map_err(|_| {
        anyhow::anyhow!(
            "FLASHSALE_TEST_IMAGE is not set: build the image with scripts/image and set it to the name it prints (scripts/test does both)"
        )
    })
}

/// podman as it runs here: vfs storage, Debian's runc, and no default
/// rlimits (a containers.conf of the test's own, removed on drop).
struct Podman {
    conf: std::path::PathBuf,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.conf);
    }
}

impl Podman {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("flashsale-{tag}-containers.conf"));
        std::fs::write(&path, "[containers]\ndefault_ulimits = []\n")?;
        Ok(Self { conf: path })
    }

    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let out = tokio::process::Command::new("podman")
            .env("CONTAINERS_CONF", &self.conf)
            .args(["--storage-driver", "vfs", "--runtime", "runc"])
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(args)
            .output()
            .await
            .map_err(|e| anyhow::anyhow!("cannot run podman (scripts/test installs it): {e}"))?;
        Ok(out)
    }

    /// Runs `args`; their standard output, or an error with both outputs.
    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "podman {}: {}\n{}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_the_operator_a_gateway_and_a_worker() -> anyhow::Result<()> {
    let image = image()?;
    let env = Env::new("image").await?;
    let podman = Podman::new(&env.sale.name)?;

    let user = podman
        .ok(&["image", "inspect", "--format", "{{.Config.User}}", &image])
        .await?;
    assert_eq!(user.trim(), "65532:65532", "the image runs as its own user");
    let help = podman
        .ok(&[
            "run",
            "--rm",
            "--read-only",
            "--network",
            "none",
            &image,
            "--help",
        ])
        .await?;
    assert!(help.contains("flashsale-operator"), "{help}");
    assert!(
        podman
            .run(&[
                "run",
                "--rm",
                "--entrypoint",
                "/bin/sh",
                &image,
                "-c",
                "true"
            ])
            .await?
            .status
            .code()
            != Some(0),
        "the image carries no shell"
    );

    env.seed(&open_sale(5, 1, 1)).await?;
    let sale = env.sale.to_string();
    let gateway_port = free_port()?;
    let (gateway, worker) = (
        format!("{}-gateway", env.sale.name),
        format!("{}-worker", env.sale.name),
    );
    let (gateway_listen, gateway_ops, worker_listen) = (
        format!("127.0.0.1:{gateway_port}"),
        format!("127.0.0.1:{}", free_port()?),
        format!("127.0.0.1:{}", free_port()?),
    );
    let amqp = amqp_url();
    let common = ["run", "-d", "--read-only", "--network", "host"];
    let result = async {
        podman
            .ok(&[
                &common[..],
                &[
                    "--name",
                    &gateway,
                    "--entrypoint",
                    "/usr/local/bin/flashsale-gateway",
                ],
                &[&image, "--sale", &sale, "--redis-url", &env.redis_url],
                &["--amqp-url", &amqp, "--listen", &gateway_listen],
                &["--ops-listen", &gateway_ops],
            ]
            .concat())
            .await?;
        podman
            .ok(&[
                &common[..],
                &[
                    "--name",
                    &worker,
                    "--entrypoint",
                    "/usr/local/bin/flashsale-worker",
                ],
                &[&image, "--sale", &sale, "--amqp-url", &amqp],
                &["--database-url", &env.db_url, "--listen", &worker_listen],
            ]
            .concat())
            .await?;
        let client = http();
        let orders = format!("http://{gateway_listen}/api/v1/sales/{sale}/orders");
        eventually(
            "the gateway in the container accepts a purchase",
            Duration::from_secs(60),
            || async {
                Ok(buy(&client, &orders, "container-buyer", 1, None)
                    .await
                    .is_ok_and(|a| a.status == 202))
            },
        )
        .await?;
        env.wait_persisted(1, Duration::from_secs(60)).await?;
        // A graceful stop: SIGTERM, and each process exits 0.
        for name in [&gateway, &worker] {
            podman.ok(&["stop", "-t", "20", name]).await?;
            let code = podman
                .ok(&["inspect", "--format", "{{.State.ExitCode}}", name])
                .await?;
            anyhow::ensure!(code.trim() == "0", "{name} exited with {code}");
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        for name in [&gateway, &worker] {
            if let Ok(out) = podman.run(&["logs", name]).await {
                eprintln!(
                    "{name}:\n{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    for name in [&gateway, &worker] {
        let _ = podman.run(&["rm", "-f", name]).await;
    }
    result?;
    env.cleanup().await
}
