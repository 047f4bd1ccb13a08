//! CPU time per order, read from `/proc` (Linux): the benchmark's own
//! process (gateway, worker and load generator run in it) and the local
//! Redis and RabbitMQ servers. Throughput on a shared 2-core machine swings
//! from run to run; the CPU each order costs each process is steadier and
//! shows where the time goes.

use std::path::Path;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// The processes followed: this one, every `redis-server` and every
/// RabbitMQ (`beam.smp`) visible in `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    pub bench: f64,
    pub redis: f64,
    pub rabbitmq: f64,
}

/// CPU seconds (user + system) of one process, or None when unreadable.
fn cpu_seconds(stat: &Path) -> Option<f64> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

fn named(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim_end() == comm)
        })
        .filter_map(|e| cpu_seconds(&e.path().join("stat")))
        .sum()
}

pub fn sample() -> Sample {
    Sample {
        bench: cpu_seconds(Path::new("/proc/self/stat")).unwrap_or(0.0),
        redis: named("redis-server"),
        rabbitmq: named("beam.smp"),
    }
}

impl Sample {
    /// What was spent since `earlier`.
    pub fn since(&self, earlier: &Sample) -> Sample {
        Sample {
            bench: self.bench - earlier.bench,
            redis: self.redis - earlier.redis,
            rabbitmq: self.rabbitmq - earlier.rabbitmq,
        }
    }

    pub fn add(&mut self, other: &Sample) {
        self.bench += other.bench;
        self.redis += other.redis;
        self.rabbitmq += other.rabbitmq;
    }

    /// `  CPU per attempt: ...` in microseconds, or None without readings.
    pub fn per(&self, count: usize) -> Option<String> {
        if self.bench <= 0.0 || count == 0 {
            return None;
        }
        let us = |s: f64| s * 1e6 / count as f64;
        Some(format!(
            "bench process {:.1} us + Redis {:.1} us + RabbitMQ {:.1} us = {:.1} us",
            us(self.bench),
            us(self.redis),
            us(self.rabbitmq),
            us(self.bench + self.redis + self.rabbitmq)
        ))
    }
}
