//! The waiting room at the gateway: signed tickets, passes and challenges,
//! the proof of work, and what each waiter is told, answered from memory.
//!
//! Every token is `base64url(JSON payload) "." base64url(HMAC-SHA256)`,
//! keyed by the sale's pass key (`PASS_KEY`, from the sale's Secret) with a
//! label per kind, so a ticket is never taken for a pass. A gateway checks
//! a token alone, without Redis: the signature, the kind, the sale and the
//! expiry.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use flashsale_store::queue::Frontier;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

/// How long a challenge may be solved and spent.
pub const CHALLENGE_TTL_MS: i64 = 120_000;

/// The key every token of a gateway is signed with, per kind.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ticket,
    Pass,
    Challenge,
}

impl Kind {
    fn label(self) -> &'static [u8] {
        match self {
            Kind::Ticket => b"flashsale ticket v1",
            Kind::Pass => b"flashsale pass v1",
            Kind::Challenge => b"flashsale challenge v1",
        }
    }
}

/// Why a token is refused; the label of `pass_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Malformed,
    Forged,
    OtherSale,
    Expired,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Missing => "missing",
            TokenError::Malformed => "malformed",
            TokenError::Forged => "forged",
            TokenError::OtherSale => "other_sale",
            TokenError::Expired => "expired",
        }
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        Self { key: key.to_vec() }
    }

    fn mac(&self, kind: Kind, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(kind.label());
        mac.update(b"\n");
        mac.update(payload);
        mac
    }

    pub fn sign<T: Serialize>(&self, kind: Kind, claims: &T) -> String {
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let tag = self.mac(kind, &payload).finalize().into_bytes();
        format!("{}.{}", B64.encode(&payload), B64.encode(tag))
    }

    /// The claims of `token` if this signer made it for `kind`.
    pub fn verify<T: DeserializeOwned>(&self, kind: Kind, token: &str) -> Result<T, TokenError> {
        let (payload, tag) = token.trim().split_once('.').ok_or(TokenError::Malformed)?;
        let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| TokenError::Malformed)?;
        self.mac(kind, &payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Forged)?;
        serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)
    }
}

/// A place in a sale's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The sale, `namespace/name`.
    pub s: String,
    /// Arrival number.
    pub a: u64,
    /// Ticket id (random, 128 bits).
    pub i: String,
    /// When the join reached Redis (ms).
    pub j: i64,
    /// The signed-in buyer who joined, when the gateway knows buyers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
}

/// Leave to buy: who, for which sale and place, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pass {
    pub s: String,
    /// The buyer the pass is for: the signed-in buyer, or `ticket-<id>`.
    pub sub: String,
    /// The place in line it was admitted at.
    pub p: u64,
    /// Valid until (ms).
    pub exp: i64,
}

/// A proof-of-work puzzle: find a `solution` such that
/// SHA-256(`<challenge token>:<solution>`) starts with `b` zero bits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    pub s: String,
    /// Random, so that each challenge is spent once.
    pub n: String,
    pub b: u8,
    pub exp: i64,
}

/// Leading zero bits of `digest`.
pub fn zero_bits(digest: &[u8]) -> u32 {
    let mut bits = 0;
    for byte in digest {
        if *byte == 0 {
            bits += 8;
        } else {
            return bits + byte.leading_zeros();
        }
    }
    bits
}

/// Whether `solution` solves the challenge `token` at `bits`.
pub fn solves(token: &str, solution: &str, bits: u8) -> bool {
    let digest = Sha256::new()
        .chain_update(token.as_bytes())
        .chain_update(b":")
        .chain_update(solution.as_bytes())
        .finalize();
    zero_bits(&digest) >= u32::from(bits)
}

/// Solves a challenge by counting up: what the bench client and the tests
/// do (the storefront does the same with WebCrypto).
pub fn solve(token: &str, bits: u8) -> String {
    (0u64..)
        .map(|n| n.to_string())
        .find(|s| solves(token, s, bits))
        .unwrap_or_default()
}

/// Whom a ticket's pass is for: the signed-in buyer, or the ticket itself.
pub fn subject(t: &Ticket) -> String {
    t.u.clone().unwrap_or_else(|| format!("ticket-{}", t.i))
}

pub use flashsale_common::now_ms;

/// A random id of 128 bits, URL-safe.
pub fn random_id() -> String {
    B64.encode(uuid::Uuid::new_v4().as_bytes())
}

/// What a waiter is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WaiterView {
    /// `waiting`, `admitted`, `sold_out`, `expired` or `ended`.
    pub state: &'static str,
    /// Place in line (1 is first); None while a lottery is not drawn.
    pub place: Option<u64>,
    /// Waiters before this one not yet admitted.
    pub ahead: Option<u64>,
    /// Seconds to wait at the current pace, roughly.
    pub estimated_wait_seconds: Option<u64>,
    /// Places admitted so far.
    pub admitted: u64,
    /// Places taken so far.
    pub joined: u64,
    /// With `admitted`: the pass to buy with (`Authorization: Bearer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass_expires_at_ms: Option<i64>,
}

/// What a gateway knows of a sale's line, refreshed by each admission step.
#[derive(Debug, Clone, Default)]
pub struct LineView {
    pub frontier: Frontier,
    /// A lottery's places by arrival (index 0 unused), once drawn.
    pub positions: Option<std::sync::Arc<Vec<u64>>>,
    pub lottery: bool,
    pub per_second: u32,
    pub pass_ms: i64,
}

impl LineView {
    /// The place of arrival `a`: a lottery's drawn arrivals by the draw,
    /// everyone else by arrival; None for a drawn arrival before the draw
    /// is known.
    pub fn place(&self, a: u64) -> Option<u64> {
        if !self.lottery {
            return Some(a);
        }
        match (self.frontier.drawn, &self.positions) {
            (Some(n), _) if a > n => Some(a),
            (Some(_), Some(pos)) => usize::try_from(a).ok().and_then(|i| pos.get(i).copied()),
            _ => None,
        }
    }
}

/// The state of `ticket` in `line`: `stock` is whether units are left or on
/// hold, `ended` whether the sale is over; `subject` the pass's buyer.
pub fn waiter(
    signer: &Signer,
    line: &LineView,
    ticket: &Ticket,
    subject: &str,
    stock_left: bool,
    ended: bool,
) -> WaiterView {
    let f = &line.frontier;
    let place = line.place(ticket.a);
    let mut view = WaiterView {
        state: "waiting",
        place,
        ahead: None,
        estimated_wait_seconds: None,
        admitted: f.frontier,
        joined: f.joined,
        pass: None,
        pass_expires_at_ms: None,
    };
    if ended {
        view.state = "ended";
        return view;
    }
    if !stock_left {
        view.state = "sold_out";
        return view;
    }
    let Some(p) = place else {
        return view;
    };
    if p <= f.frontier {
        match f.admitted_at(p) {
            Some(at) => {
                let exp = at + line.pass_ms;
                view.state = "admitted";
                view.pass = Some(signer.sign(
                    Kind::Pass,
                    &Pass {
                        s: ticket.s.clone(),
                        sub: subject.to_owned(),
                        p,
                        exp,
                    },
                ));
                view.pass_expires_at_ms = Some(exp);
            }
            None => view.state = "expired",
        }
        return view;
    }
    let ahead = p - f.frontier - 1;
    view.ahead = Some(ahead);
    view.estimated_wait_seconds = Some(ahead / u64::from(line.per_second.max(1)));
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(b"a test key of the sale")
    }

    #[test]
    fn a_token_is_checked_for_its_key_its_kind_and_its_shape() {
        let s = signer();
        let t = Ticket {
            s: "ns/a".into(),
            a: 7,
            i: random_id(),
            j: 1,
            u: None,
        };
        let token = s.sign(Kind::Ticket, &t);
        assert_eq!(s.verify::<Ticket>(Kind::Ticket, &token), Ok(t));
        assert_eq!(
            s.verify::<Pass>(Kind::Pass, &token),
            Err(TokenError::Forged),
            "a ticket is not a pass"
        );
        assert_eq!(
            Signer::new(b"another key").verify::<Ticket>(Kind::Ticket, &token),
            Err(TokenError::Forged)
        );
        let (payload, tag) = token.split_once('.').unwrap_or_default();
        let mut forged = B64.decode(payload).unwrap_or_default();
        forged[10] ^= 1;
        assert_eq!(
            s.verify::<Ticket>(Kind::Ticket, &format!("{}.{tag}", B64.encode(&forged))),
            Err(TokenError::Forged)
        );
        for bad in ["", "x", "a.b", "!!.!!"] {
            assert!(s.verify::<Ticket>(Kind::Ticket, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_solution_is_checked_at_the_challenges_difficulty() {
        let token = signer().sign(
            Kind::Challenge,
            &Challenge {
                s: "ns/a".into(),
                n: random_id(),
                b: 12,
                exp: 1,
            },
        );
        let solution = solve(&token, 12);
        assert!(solves(&token, &solution, 12));
        assert!(solves(&token, &solution, 0));
        // A solution of 12 bits has 12 or more: 24 holds for one in 4096.
        let wrong = (0u64..)
            .map(|n| n.to_string())
            .find(|s| !solves(&token, s, 12))
            .unwrap_or_default();
        assert!(!solves(&token, &wrong, 12));
        assert_eq!(zero_bits(&[0, 0, 0b0001_0000]), 19);
        assert_eq!(zero_bits(&[0xff]), 0);
    }

    fn line(frontier: u64, joined: u64, steps: Vec<(u64, i64)>) -> LineView {
        LineView {
            frontier: Frontier {
                frontier,
                joined,
                steps,
                ..Frontier::default()
            },
            per_second: 10,
            pass_ms: 60_000,
            ..LineView::default()
        }
    }

    fn ticket(a: u64) -> Ticket {
        Ticket {
            s: "ns/a".into(),
            a,
            i: format!("id{a}"),
            j: 0,
            u: None,
        }
    }

    #[test]
    fn a_waiter_is_told_its_place_its_pass_or_the_end() {
        let s = signer();
        let l = line(5, 40, vec![(5, 1_000)]);
        let w = waiter(&s, &l, &ticket(30), "u", true, false);
        assert_eq!((w.state, w.place, w.ahead), ("waiting", Some(30), Some(24)));
        assert_eq!(w.estimated_wait_seconds, Some(2));
        let w = waiter(&s, &l, &ticket(3), "u", true, false);
        assert_eq!(w.state, "admitted");
        assert_eq!(w.pass_expires_at_ms, Some(61_000));
        let pass: Pass = s
            .verify(Kind::Pass, w.pass.as_deref().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!((pass.p, pass.sub.as_str(), pass.exp), (3, "u", 61_000));
        let ran_out = LineView {
            frontier: Frontier {
                expired_upto: 5,
                ..l.frontier.clone()
            },
            ..l.clone()
        };
        assert_eq!(
            waiter(&s, &ran_out, &ticket(3), "u", true, false).state,
            "expired"
        );
        assert_eq!(
            waiter(&s, &l, &ticket(3), "u", false, false).state,
            "sold_out"
        );
        assert_eq!(waiter(&s, &l, &ticket(30), "u", true, true).state, "ended");
    }

    #[test]
    fn a_lottery_places_its_drawn_arrivals_by_the_draw() {
        let mut l = line(0, 10, Vec::new());
        l.lottery = true;
        assert_eq!(l.place(3), None, "not drawn yet");
        l.frontier.drawn = Some(4);
        l.positions = Some(std::sync::Arc::new(vec![0, 4, 1, 3, 2]));
        assert_eq!(l.place(2), Some(1));
        assert_eq!(l.place(4), Some(2));
        assert_eq!(l.place(7), Some(7), "later arrivals keep their arrival");
    }
}
