//! The waiting room in Redis: joining the line, letting buyers through,
//! and a lottery's draw. `lua/join.lua` and `lua/admit.lua` hold the rules;
//! this module calls them and computes the draw, which is a pure function
//! of the seed and the tickets ([`draw_order`]) that anyone holding both
//! can recompute.

use crate::keys::SaleKeys;
use crate::scripts;
use flashsale_common::SaleRef;
use hmac::{Hmac, Mac};
use redis::aio::ConnectionLike;
use sha2::{Digest, Sha256};

/// A place in the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// 1 for the first join to reach Redis, 2 for the next, ...
    pub arrival: u64,
    pub ticket_id: String,
    /// Redis's clock when the join reached it (ms).
    pub joined_ms: i64,
    /// False when the buyer was in line already and got their place back.
    pub new: bool,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinRefusal {
    NotFound,
    /// The sale has no waiting room.
    NoQueue,
    /// The line opens at this time (ms).
    NotOpen(i64),
    Ended,
    SoldOut,
    /// The solved challenge was used for a join already.
    ChallengeSpent,
}

/// Joins `sale`'s line with a fresh `ticket_id`; a signed-in `user` who is
/// in line already gets their place back. `challenge`: the solved
/// challenge's nonce and expiry (ms), spent by this join.
pub async fn join<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    ticket_id: &str,
    user: Option<&str>,
    challenge: Option<(&str, i64)>,
) -> redis::RedisResult<Result<Joined, JoinRefusal>> {
    let keys = SaleKeys::new(sale);
    let (nonce, expiry) = challenge.unwrap_or(("", 0));
    let reply: Vec<redis::Value> = scripts::JOIN
        .key(keys.sale())
        .key(keys.queue())
        .key(keys.line())
        .key(keys.queue_users())
        .key(keys.pow())
        .arg(ticket_id)
        .arg(user.unwrap_or(""))
        .arg(nonce)
        .arg(expiry)
        .invoke_async(conn)
        .await?;
    let text = |i: usize| match reply.get(i) {
        Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(redis::Value::Int(n)) => n.to_string(),
        _ => String::new(),
    };
    let int = |i: usize| text(i).parse::<i64>().unwrap_or(0);
    Ok(match text(0).as_str() {
        "ok" => Ok(Joined {
            arrival: u64::try_from(int(1)).unwrap_or(0),
            ticket_id: text(2),
            joined_ms: int(3),
            new: int(4) == 1,
        }),
        _ => Err(match text(1).as_str() {
            "no_queue" => JoinRefusal::NoQueue,
            "queue_not_open" => JoinRefusal::NotOpen(int(2)),
            "ended" => JoinRefusal::Ended,
            "sold_out" => JoinRefusal::SoldOut,
            "challenge_spent" => JoinRefusal::ChallengeSpent,
            _ => JoinRefusal::NotFound,
        }),
    })
}

/// Where the line stands after an admission step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Places 1 to `frontier` are admitted.
    pub frontier: u64,
    /// Places taken so far.
    pub joined: u64,
    /// A lottery's drawn arrivals, once drawn.
    pub drawn: Option<u64>,
    /// Places up to here were admitted longer than a pass ago.
    pub expired_upto: u64,
    /// Passes that ran out unused.
    pub expired: u64,
    /// Passes that bought.
    pub used: u64,
    /// The steps of the last pass's time: the frontier after each and when
    /// it was taken (ms), oldest first. A place's pass runs from the first
    /// step that reached it.
    pub steps: Vec<(u64, i64)>,
}

impl Frontier {
    /// When place `p` was admitted (ms): None when it is not, or was
    /// admitted longer than a pass ago (its pass ran out).
    pub fn admitted_at(&self, p: u64) -> Option<i64> {
        if p == 0 || p > self.frontier || p <= self.expired_upto {
            return None;
        }
        self.steps.iter().find(|(f, _)| *f >= p).map(|(_, at)| *at)
    }

    pub fn waiting(&self) -> u64 {
        self.joined.saturating_sub(self.frontier)
    }
}

/// Runs one admission step for `sale`; None for a sale without a line.
pub async fn admit<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
) -> redis::RedisResult<Option<Frontier>> {
    let keys = SaleKeys::new(sale);
    let reply: Vec<i64> = scripts::ADMIT
        .key(keys.sale())
        .key(keys.queue())
        .key(keys.steps())
        .key(keys.used())
        .invoke_async(conn)
        .await?;
    let [frontier, joined, drawn, upto, expired, used, steps @ ..] = reply.as_slice() else {
        return Ok(None);
    };
    let n = |v: &i64| u64::try_from(*v).unwrap_or(0);
    Ok(Some(Frontier {
        frontier: n(frontier),
        joined: n(joined),
        drawn: u64::try_from(*drawn).ok(),
        expired_upto: n(upto),
        expired: n(expired),
        used: n(used),
        steps: steps.chunks_exact(2).map(|s| (n(&s[0]), s[1])).collect(),
    }))
}

/// Records that the pass of place `p` bought: it no longer counts against
/// the units left. Losing this write only lets fewer buyers through until
/// the pass would have run out.
pub async fn mark_used<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    p: u64,
) -> redis::RedisResult<()> {
    let keys = SaleKeys::new(sale);
    redis::cmd("SETBIT")
        .arg(keys.used())
        .arg(p)
        .arg(1)
        .query_async::<i64>(conn)
        .await
        .map(|_| ())
}

/// A line's counts, read without moving it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub joined: u64,
    pub admitted: u64,
    pub used: u64,
    pub expired: u64,
    /// Arrivals in a lottery's draw, once drawn.
    pub drawn: Option<u64>,
}

impl QueueCounts {
    pub fn waiting(&self) -> u64 {
        self.joined.saturating_sub(self.admitted)
    }
}

/// The counts of `sale`'s line (all zero for a sale nobody joined).
pub async fn counts<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
) -> redis::RedisResult<QueueCounts> {
    let keys = SaleKeys::new(sale);
    let (q, used): (Vec<Option<u64>>, u64) = redis::pipe()
        .cmd("HMGET")
        .arg(keys.queue())
        .arg(&["joined", "frontier", "expired", "drawn"][..])
        .cmd("BITCOUNT")
        .arg(keys.used())
        .query_async(conn)
        .await?;
    let get = |i: usize| q.get(i).copied().flatten();
    Ok(QueueCounts {
        joined: get(0).unwrap_or(0),
        admitted: get(1).unwrap_or(0),
        used,
        expired: get(2).unwrap_or(0),
        drawn: get(3),
    })
}

/// SHA-256 of a lottery seed, hex: the commitment published before the line
/// opens.
pub fn commitment(seed: &[u8]) -> String {
    hex::encode(Sha256::digest(seed))
}

/// A ticket's lot: HMAC-SHA256 keyed by the seed over the ticket id.
pub fn lot(seed: &[u8], ticket_id: &str) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(seed)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(ticket_id.as_bytes());
    mac.finalize().into_bytes().into()
}

/// The drawn order of the arrivals whose tickets are `ids` (arrival i + 1
/// holds `ids[i]`): by lot, smallest first; equal lots (never seen with
/// 256 bits) by arrival.
pub fn draw_order(seed: &[u8], ids: &[String]) -> Vec<u64> {
    let mut lots: Vec<([u8; 32], u64)> = ids
        .iter()
        .zip(1u64..)
        .map(|(id, arrival)| (lot(seed, id), arrival))
        .collect();
    lots.sort_unstable();
    lots.into_iter().map(|(_, arrival)| arrival).collect()
}

/// Arrivals read or written per call: each stays short, so other sales on
/// the same Redis are not held up.
const CHUNK: usize = 2_000;

/// The ticket ids of arrivals 1 to `n`.
pub async fn tickets<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    n: u64,
) -> redis::RedisResult<Vec<String>> {
    let keys = SaleKeys::new(sale);
    let mut ids = Vec::new();
    let n = usize::try_from(n).unwrap_or(usize::MAX);
    while ids.len() < n {
        let to = (ids.len() + CHUNK).min(n) - 1;
        let part: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.line())
            .arg(ids.len())
            .arg(to)
            .query_async(conn)
            .await?;
        if part.is_empty() {
            break;
        }
        ids.extend(part);
    }
    Ok(ids)
}

/// The drawn order as stored: arrivals, first admitted first.
pub async fn drawn<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
) -> redis::RedisResult<Vec<u64>> {
    let keys = SaleKeys::new(sale);
    redis::cmd("LRANGE")
        .arg(keys.draw())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
}

/// What [`draw`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draw {
    /// Before the start (by Redis's clock): nothing to draw yet.
    Early,
    /// Drawn now, over this many arrivals.
    Made(u64),
    /// Drawn before, over this many arrivals.
    Done(u64),
}

/// Makes a lottery's draw once the sale started: everyone who joined before
/// the start, ordered by [`draw_order`]. Safe to repeat: a draw cut short
/// is made again, a finished one is left alone.
pub async fn draw<C: ConnectionLike + Send>(
    conn: &mut C,
    sale: &SaleRef,
    seed: &[u8],
) -> redis::RedisResult<Draw> {
    let keys = SaleKeys::new(sale);
    let (step, n): (String, i64) = scripts::DRAW
        .key(keys.sale())
        .key(keys.queue())
        .key(keys.draw())
        .arg("begin")
        .invoke_async(conn)
        .await?;
    let n = u64::try_from(n).unwrap_or(0);
    match step.as_str() {
        "drawn" => return Ok(Draw::Done(n)),
        "early" => return Ok(Draw::Early),
        _ => {}
    }
    let order = draw_order(seed, &tickets(conn, sale, n).await?);
    redis::cmd("DEL")
        .arg(keys.draw())
        .query_async::<i64>(conn)
        .await?;
    for part in order.chunks(CHUNK) {
        redis::cmd("RPUSH")
            .arg(keys.draw())
            .arg(part)
            .query_async::<i64>(conn)
            .await?;
    }
    let done: i64 = scripts::DRAW
        .key(keys.sale())
        .key(keys.queue())
        .key(keys.draw())
        .arg("finish")
        .arg(order.len())
        .invoke_async(conn)
        .await?;
    if done != 1 {
        return Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "the draw list changed while it was written",
        )));
    }
    Ok(Draw::Made(n))
}

/// The places of a lottery's line: `position[arrival]` for the drawn
/// arrivals (index 0 unused); later arrivals keep their arrival number.
pub fn positions(order: &[u64]) -> Vec<u64> {
    let mut position = vec![0; order.len() + 1];
    for (place, &arrival) in (1u64..).zip(order) {
        if let Some(slot) = usize::try_from(arrival)
            .ok()
            .and_then(|a| position.get_mut(a))
        {
            *slot = place;
        }
    }
    position
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_draw_is_a_function_of_the_seed_and_the_tickets() {
        let ids: Vec<String> = (0..50).map(|i| format!("ticket-{i}")).collect();
        let a = draw_order(b"seed one", &ids);
        assert_eq!(a, draw_order(b"seed one", &ids), "same seed, same order");
        assert_ne!(
            a,
            draw_order(b"seed two", &ids),
            "another seed, another order"
        );
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=50).collect::<Vec<u64>>(), "a permutation");
        let pos = positions(&a);
        for (place, arrival) in (1u64..).zip(&a) {
            assert_eq!(pos[usize::try_from(*arrival).unwrap_or(0)], place);
        }
    }

    /// Over 2 000 draws of 10 tickets (fixed seeds, so it cannot flake)
    /// every ticket lands on every place about as often: a chi-square test
    /// of each ticket's places (9 degrees of freedom, p = 0.001: 27.88) and
    /// of the whole table (90, p = 0.01: 124.12).
    #[test]
    fn the_draw_puts_every_ticket_anywhere_alike() {
        let ids: Vec<String> = (0..10).map(|i| format!("ticket-{i}")).collect();
        let mut counts = [[0u32; 10]; 10];
        for d in 0..2_000 {
            let order = draw_order(format!("seed-{d}").as_bytes(), &ids);
            for (place, arrival) in order.iter().enumerate() {
                counts[usize::try_from(*arrival).unwrap_or(1) - 1][place] += 1;
            }
        }
        let expected = 200.0;
        let mut total = 0.0;
        for (ticket, row) in counts.iter().enumerate() {
            let chi: f64 = row
                .iter()
                .map(|&n| (f64::from(n) - expected).powi(2) / expected)
                .sum();
            assert!(
                chi < 27.88,
                "ticket {ticket}: chi-square {chi:.1}, places {row:?}"
            );
            total += chi;
        }
        assert!(total < 124.12, "chi-square of the table {total:.1}");
    }

    #[test]
    fn a_place_is_admitted_from_the_first_step_that_reached_it() {
        let f = Frontier {
            frontier: 30,
            joined: 40,
            expired_upto: 5,
            steps: vec![(10, 1_000), (30, 2_000)],
            ..Frontier::default()
        };
        assert_eq!(f.admitted_at(3), None, "ran out");
        assert_eq!(f.admitted_at(7), Some(1_000));
        assert_eq!(f.admitted_at(10), Some(1_000));
        assert_eq!(f.admitted_at(11), Some(2_000));
        assert_eq!(f.admitted_at(31), None, "still waiting");
        assert_eq!(f.waiting(), 10);
    }

    #[test]
    fn the_commitment_is_the_seeds_sha256() {
        assert_eq!(
            commitment(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
