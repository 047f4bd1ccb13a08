/// mimalloc: the request path allocates many small, short-lived buffers,
/// where glibc malloc was a large share of the CPU under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use flashsale_worker::{Config, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cfg = Config::parse();
    flashsale_common::telemetry::init(cfg.log.log_format);
    flashsale_common::ops::exit("worker", run(cfg).await)
}
