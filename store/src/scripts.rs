//! The Lua scripts that own every change to a sale's state in Redis. Each one
//! runs atomically on the shard that holds the sale's hash tag.

use redis::Script;
use std::sync::LazyLock;

/// The formats the scripts write (order record, outbox member, stock
/// event), defined once and loaded in front of every script.
const FORMATS: &str = include_str!("lua/formats.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{FORMATS}{body}"))
}

/// Rate limit, window, idempotency, limits and stock checks, then the
/// reservation and its outbox record: one round trip.
pub static RESERVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/reserve.lua")));
/// Create or update a sale from its spec; restocks by the difference.
pub static SEED: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/seed.lua")));
/// Rebuild a sale Redis lost from the orders ledger, step by step.
pub static RESTORE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/restore.lua")));
/// Counters and configuration, with the server's clock.
pub static STATUS: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/status.lua")));
/// Close or reopen a sale outside its window.
pub static CLOSE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/close.lua")));
/// What a gateway needs to answer a sold-out sale from memory.
pub static SOLD_OUT_SNAPSHOT: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/sold_out_snapshot.lua")));
/// Lease outbox entries that waited too long for a publisher confirm.
pub static SWEEP: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/sweep.lua")));
/// Confirm or expire one hold; exactly one of the two wins.
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/settle.lua")));
/// Holds whose deadline passed.
pub static DUE_HOLDS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/due_holds.lua")));

/// One SCAN step of removing a sale's rate-limit buckets, run where the
/// sale's keys live (a plain SCAN would go to any node of a cluster).
pub static DROP_RATE_LIMITS: LazyLock<Script> =
    LazyLock::new(|| script(include_str!("lua/drop_rate_limits.lua")));

/// Join a sale's waiting room.
pub static JOIN: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/join.lua")));
/// Let buyers through the waiting room at the allowed pace.
pub static ADMIT: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/admit.lua")));
/// Begin and finish a lottery's draw.
pub static DRAW: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/draw.lua")));
