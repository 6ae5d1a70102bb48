//! The fault model and the one definition of cluster sizes and quorums.
//!
//! | | [`Mode::Bft`] | [`Mode::Crash`] |
//! |---|---|---|
//! | replicas for f faults ([`Mode::replicas_min`]) | 3f+1 | 2f+1 |
//! | agreement quorum ([`Mode::quorum`]) | ceil((n+f+1)/2) | n/2+1 (majority) |
//! | weak quorum ([`Mode::weak_quorum`]) | f+1 | 1 |
//! | replies a client accepts ([`Mode::reply_quorum`]) | f+1 | f+1 |
//!
//! Why these numbers: two BFT quorums share at least f+1 replicas (2q > n+f), so at
//! least one correct replica is in both, and a quorum exists without the f faulty ones
//! (q <= n-f). Two crash-mode quorums intersect (2q > n) and a quorum exists without
//! the f crashed ones. [`Mode::quorum`] asserts these on every call; the unit tests
//! check them for every size up to [`REPLICAS_MAX`]. A client accepts a result on f+1
//! matching replies in both modes: each replica replies only once its log holds the
//! request, so an accepted result is on f+1 disks and survives the loss of any f.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CoreError;
use crate::ids::REPLICAS_MAX;

/// Fault model of the cluster. In the cluster TOML: `mode = "bft"` or `mode = "crash"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Byzantine faults (Mod-SMaRt): n >= 3f+1, quorums ceil((n+f+1)/2).
    Bft,
    /// Crash faults: n >= 2f+1, majority quorums.
    Crash,
}

impl Mode {
    /// Both modes.
    pub const ALL: [Mode; 2] = [Mode::Bft, Mode::Crash];

    /// The name used in configs and on command lines.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Bft => "bft",
            Mode::Crash => "crash",
        }
    }

    /// The fewest replicas that tolerate `f` faults: 3f+1 (BFT) or 2f+1 (crash).
    pub const fn replicas_min(self, f: usize) -> usize {
        match self {
            Mode::Bft => 3 * f + 1,
            Mode::Crash => 2 * f + 1,
        }
    }

    /// The most faults `n` replicas tolerate: the largest f with
    /// [`Mode::replicas_min`]`(f) <= n` (0 when `n` is too small for any).
    pub const fn f_max(self, n: usize) -> usize {
        let f = match self {
            Mode::Bft => n.saturating_sub(1) / 3,
            Mode::Crash => n.saturating_sub(1) / 2,
        };
        assert!(n == 0 || self.replicas_min(f) <= n);
        assert!(self.replicas_min(f + 1) > n);
        f
    }

    /// Matching votes that accept (after WRITEs) and decide (after ACCEPTs), and that
    /// install a regency: ceil((n+f+1)/2) in BFT mode, a majority in crash mode.
    ///
    /// Panics if `n` replicas cannot tolerate `f` faults in this mode.
    pub const fn quorum(self, n: usize, f: usize) -> usize {
        assert!(n >= self.replicas_min(f), "n too small for f in this mode");
        let q = match self {
            Mode::Bft => (n + f + 1).div_ceil(2),
            Mode::Crash => n / 2 + 1,
        };
        match self {
            // Two quorums share f+1 replicas, so at least one correct one.
            Mode::Bft => assert!(2 * q > n + f),
            // Two quorums share a replica.
            Mode::Crash => assert!(2 * q > n),
        }
        // A quorum forms without the f faulty replicas.
        assert!(q <= n - f);
        q
    }

    /// Matching answers that include at least one correct replica, so what they say
    /// is true: f+1 in BFT mode, 1 in crash mode (nobody lies there). Decided batches
    /// fetched for catch-up are trusted on this many.
    pub const fn weak_quorum(self, f: usize) -> usize {
        match self {
            Mode::Bft => f + 1,
            Mode::Crash => 1,
        }
    }

    /// Matching replies a client needs before it accepts a result: f+1 in both modes.
    /// In BFT mode f+1 include a correct replica, so the result is the decided one; in
    /// crash mode one reply would tell the result, but a replica replies only once its
    /// log holds the request, so f+1 replies mean f+1 disks: the result survives a crash
    /// of every replica followed by the loss of any f disks.
    pub const fn reply_quorum(self, f: usize) -> usize {
        f + 1
    }
}

impl FromStr for Mode {
    type Err = CoreError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Mode::ALL
            .into_iter()
            .find(|mode| mode.name() == text)
            .ok_or_else(|| CoreError::UnknownMode(text.to_owned()))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// The smallest fault-tolerant cluster of either mode fits in a configuration.
const _: () = assert!(Mode::Bft.replicas_min(1) <= REPLICAS_MAX);
const _: () = assert!(Mode::Crash.replicas_min(1) <= REPLICAS_MAX);
// The textbook sizes: 4 replicas, quorum 3; 3 replicas, quorum 2; f+1 = 2 replies.
const _: () = assert!(Mode::Bft.quorum(4, 1) == 3);
const _: () = assert!(Mode::Crash.quorum(3, 1) == 2);
const _: () = assert!(Mode::Bft.reply_quorum(1) == 2 && Mode::Crash.reply_quorum(1) == 2);
const _: () = assert!(Mode::Bft.f_max(REPLICAS_MAX) >= 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorums_intersect_in_a_correct_replica_and_form_without_the_faulty() {
        for n in 1..=REPLICAS_MAX {
            for mode in Mode::ALL {
                for f in 0..=mode.f_max(n) {
                    let q = mode.quorum(n, f);
                    assert!(q <= n - f, "{mode} n={n} f={f}");
                    match mode {
                        Mode::Bft => assert!(2 * q > n + f, "{mode} n={n} f={f}"),
                        Mode::Crash => assert!(2 * q > n, "{mode} n={n} f={f}"),
                    }
                    assert!(mode.weak_quorum(f) <= q, "a weak quorum is never larger");
                    // Replies come from n-f replicas without the faulty ones.
                    assert!(mode.reply_quorum(f) <= n - f, "{mode} n={n} f={f}");
                }
            }
        }
    }

    #[test]
    fn sizes_are_the_papers() {
        for f in 1..10 {
            assert_eq!(Mode::Bft.replicas_min(f), 3 * f + 1);
            assert_eq!(Mode::Crash.replicas_min(f), 2 * f + 1);
            assert_eq!(Mode::Bft.quorum(3 * f + 1, f), 2 * f + 1);
            assert_eq!(Mode::Crash.quorum(2 * f + 1, f), f + 1);
            assert_eq!(Mode::Bft.reply_quorum(f), f + 1);
            assert_eq!(Mode::Crash.reply_quorum(f), f + 1);
        }
    }

    #[test]
    fn f_max_inverts_replicas_min() {
        for mode in Mode::ALL {
            assert_eq!(mode.f_max(0), 0);
            for f in 0..20 {
                let n = mode.replicas_min(f);
                assert_eq!(mode.f_max(n), f, "{mode} n={n}");
                // One replica fewer tolerates one fault fewer.
                if f > 0 {
                    assert_eq!(mode.f_max(n - 1), f - 1, "{mode} n={}", n - 1);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "n too small")]
    fn a_quorum_of_too_few_replicas_is_a_broken_invariant() {
        let _ = Mode::Bft.quorum(3, 1);
    }

    #[test]
    fn names_parse_display_and_serialise_the_same() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Cluster {
            mode: Mode,
        }
        for mode in Mode::ALL {
            assert_eq!(mode.to_string().parse::<Mode>(), Ok(mode));
            let text = format!("mode = \"{mode}\"\n");
            assert_eq!(toml::from_str::<Cluster>(&text).expect("parses"), Cluster { mode });
            assert_eq!(toml::to_string(&Cluster { mode }).expect("serialises"), text);
        }
        assert_eq!("Bft".parse::<Mode>(), Err(CoreError::UnknownMode("Bft".into())));
    }
}
