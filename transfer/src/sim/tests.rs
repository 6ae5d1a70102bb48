//! The simulation's tests: seed swarms per protocol family, then scenarios that place
//! one Byzantine seeder at each role.

use super::*;
use crate::freshness::paper_order;

/// Seeds per family in the default run; `DURA_TRANSFER_SEEDS` overrides.
const SEEDS_F1_N4: u64 = 1_500;
const SEEDS_GENERAL_N4: u64 = 1_000;
const SEEDS_N7: u64 = 600;
const SEEDS_CRASH_N3: u64 = 800;
const SEEDS_CRASH_N5: u64 = 300;
const SEEDS_PBFT_N4: u64 = 600;
const SEEDS_PBFT_N7: u64 = 300;

fn swarm_reports(family: Family, count: u64) -> Summary {
    let summary = swarm(family, 0, count);
    eprintln!("{family:?}: {summary:?}");
    if std::env::var_os("DURA_TRANSFER_SEED").is_none() && summary.runs >= 200 {
        // The swarm exercised what it is for.
        assert!(summary.with_faults > summary.runs / 4, "{summary:?}");
        assert!(summary.restarts > 0, "{summary:?}");
    }
    summary
}

#[test]
fn swarm_cst_f1_optimisation_n4() {
    let summary = swarm_reports(Family::CstF1N4, SEEDS_F1_N4);
    assert!(summary.runs < 200 || (summary.proofs > 0 && summary.truncations > 0), "{summary:?}");
}

#[test]
fn swarm_cst_general_n4() {
    let summary = swarm_reports(Family::CstGeneralN4, SEEDS_GENERAL_N4);
    assert!(summary.runs < 200 || summary.proofs > 0, "{summary:?}");
}

#[test]
fn swarm_cst_n7_f2() {
    let summary = swarm_reports(Family::CstN7, SEEDS_N7);
    assert!(summary.runs < 200 || summary.proofs > 0, "{summary:?}");
}

#[test]
fn swarm_crash_n3() {
    let summary = swarm_reports(Family::CrashN3, SEEDS_CRASH_N3);
    assert_eq!(summary.proofs, 0, "nobody lies in crash mode");
}

#[test]
fn swarm_crash_n5() {
    swarm_reports(Family::CrashN5, SEEDS_CRASH_N5);
}

#[test]
fn swarm_pbft_like_n4() {
    let summary = swarm_reports(Family::PbftN4, SEEDS_PBFT_N4);
    assert!(summary.runs < 200 || summary.proofs > 0, "{summary:?}");
}

#[test]
fn swarm_pbft_like_n7() {
    swarm_reports(Family::PbftN7, SEEDS_PBFT_N7);
}

// ----- scenarios -----

/// A quiet run of this protocol with leecher 0.
fn quiet(mode: Mode, n: usize, variant: Variant, f1: bool) -> SimConfig {
    let mut config = SimConfig::quiet(mode, n, variant, 11);
    config.f1_optimisation = f1;
    config
}

/// The replica at each freshness position of `config`'s run.
fn positions(config: &SimConfig) -> Vec<ReplicaId> {
    Sim::new(config.clone()).positions()
}

fn run(config: &SimConfig) -> Report {
    let (report, config, history) = Sim::new(config.clone()).run();
    if let Err(why) = check(&config, &report, &history) {
        panic!("{why}\n  config: {config:?}\n  report: {report:?}");
    }
    report
}

fn fetched_from(report: &Report) -> BTreeSet<ReplicaId> {
    report.fetches.iter().map(|(from, _)| *from).collect()
}

fn faults_of(report: &Report, replica: ReplicaId) -> Vec<Fault> {
    report.failed.iter().filter(|(r, _)| *r == replica).map(|(_, f)| *f).collect()
}

#[test]
fn freshness_from_reports_is_the_papers_order_from_requests() {
    for (mode, n) in [(Mode::Bft, 4), (Mode::Bft, 7), (Mode::Crash, 3), (Mode::Crash, 5)] {
        for seed in 0..40 {
            let mut config = SimConfig::quiet(mode, n, Variant::Cst, seed);
            config.leecher = (seed % n as u64) as ReplicaId;
            config.head_start = 40 + seed * 3;
            let sim = Sim::new(config.clone());
            let requests = sim.history.requests[config.head_start as usize];
            let paper = paper_order(requests, config.period, n, config.leecher);
            // Replicas whose checkpoints fall in one batch tie in ours (by id) and not in
            // the paper's (by request); compare where the bases differ.
            let ours = sim.positions();
            let ranks = |order: &[ReplicaId]| -> BTreeMap<ReplicaId, usize> {
                order.iter().enumerate().map(|(i, &r)| (r, i)).collect()
            };
            let (ours_rank, paper_rank) = (ranks(&ours), ranks(&paper));
            let bases: BTreeMap<ReplicaId, AgreementId> = sim
                .seeders
                .iter()
                .map(|(&r, s)| {
                    (
                        r,
                        s.points
                            .iter()
                            .copied()
                            .filter(|&p| p <= config.head_start)
                            .max()
                            .unwrap_or(0),
                    )
                })
                .collect();
            for a in &ours {
                for b in &ours {
                    if bases[a] > bases[b] {
                        assert!(
                            ours_rank[a] < ours_rank[b] && paper_rank[a] < paper_rank[b],
                            "{mode:?} n={n} seed {seed}: {ours:?} vs {paper:?}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn f1_optimisation_spreads_the_roles_as_the_paper_says() {
    let config = quiet(Mode::Bft, 4, Variant::Cst, true);
    let order = positions(&config);
    let report = run(&config);
    let first = order[0];
    let second = order[1];
    let third = order[2];
    let has =
        |from, want: fn(&Want) -> bool| report.fetches.iter().any(|(r, w)| *r == from && want(w));
    // The 2nd sends C_2 (and HL_1, HL_2), the 1st L_1 (and HC_1), the 3rd L_2.
    assert!(has(second, |w| matches!(w, Want::Checkpoint { .. })), "{report:?}");
    assert!(has(first, |w| matches!(w, Want::Log(_))) && has(third, |w| matches!(w, Want::Log(_))));
    assert_eq!(report.fetches.len(), 3, "one checkpoint, two pieces: {report:?}");
    let asked: BTreeSet<ReplicaId> = report.hash_requests.iter().copied().collect();
    assert_eq!(asked, [first, second].into_iter().collect());
    assert!(report.restarts.is_empty() && report.failed.is_empty());
}

#[test]
fn general_cst_takes_the_state_from_the_f_plus_1th_and_hashes_from_the_f_freshest() {
    for (n, f1) in [(4, false), (7, true)] {
        let config = quiet(Mode::Bft, n, Variant::Cst, f1);
        let f = config.f();
        let order = positions(&config);
        let report = run(&config);
        assert_eq!(fetched_from(&report), [order[f]].into_iter().collect(), "n={n}: {report:?}");
        // C_{f+1} and L_1..L_{f+1}.
        assert_eq!(report.fetches.len(), f + 2);
        let asked: BTreeSet<ReplicaId> = report.hash_requests.iter().copied().collect();
        assert_eq!(asked, order[..f].iter().copied().collect());
    }
}

#[test]
fn crash_mode_takes_the_checkpoint_from_the_freshest_and_the_log_from_the_next() {
    let config = quiet(Mode::Crash, 3, Variant::Cst, true);
    let order = positions(&config);
    let report = run(&config);
    assert!(
        report.fetches.contains(&(
            order[0],
            Want::Checkpoint {
                agreement_id: report
                    .fetches
                    .iter()
                    .find_map(|(_, w)| match w {
                        Want::Checkpoint { agreement_id } => Some(*agreement_id),
                        Want::Log(_) => None,
                    })
                    .expect("a checkpoint")
            }
        ))
    );
    assert!(report.fetches.iter().any(|(r, w)| *r == order[1] && matches!(w, Want::Log(_))));
    assert!(report.hash_requests.is_empty(), "no validation in crash mode");
    // Without the optimisation, the freshest sends both.
    let mut config = quiet(Mode::Crash, 5, Variant::Cst, true);
    config.period = 40;
    let order = positions(&config);
    let report = run(&config);
    assert_eq!(fetched_from(&report), [order[0]].into_iter().collect(), "f = 2: {report:?}");
}

#[test]
fn pbft_like_one_replica_sends_everything_and_the_others_hashes() {
    for n in [4, 7] {
        let config = quiet(Mode::Bft, n, Variant::PbftLike, false);
        let report = run(&config);
        assert_eq!(fetched_from(&report).len(), 1, "{report:?}");
        assert_eq!(report.fetches.len(), 2, "checkpoint and log");
        let seeder = report.fetches[0].0;
        let asked: BTreeSet<ReplicaId> = report.hash_requests.iter().copied().collect();
        assert_eq!(asked.len(), n - 2);
        assert!(!asked.contains(&seeder));
    }
}

#[test]
fn the_leader_is_not_a_seeder_when_another_replica_can_serve() {
    for (mode, n, variant, f1) in [
        (Mode::Bft, 4, Variant::Cst, true),
        (Mode::Bft, 4, Variant::Cst, false),
        (Mode::Bft, 7, Variant::Cst, true),
        (Mode::Crash, 3, Variant::Cst, true),
        (Mode::Crash, 5, Variant::Cst, true),
        (Mode::Bft, 4, Variant::PbftLike, false),
        (Mode::Bft, 7, Variant::PbftLike, false),
    ] {
        for leader in 1..n as ReplicaId {
            let mut config = quiet(mode, n, variant, f1);
            config.leader = Some(leader);
            let report = run(&config);
            assert!(
                !fetched_from(&report).contains(&leader),
                "{mode:?} n={n} {variant:?} f1={f1} leader {leader}: {report:?}"
            );
        }
    }
    // Where the general protocol would take the state from the leader (the (f+1)-th
    // freshest), it takes it from the next, and the leader sends hashes only.
    let mut config = quiet(Mode::Bft, 4, Variant::Cst, false);
    let order = positions(&config);
    config.leader = Some(order[1]);
    let report = run(&config);
    assert_eq!(fetched_from(&report), [order[2]].into_iter().collect());
    assert!(report.hash_requests.contains(&order[1]), "the leader validates: {report:?}");
}

#[test]
fn the_leader_seeds_when_nobody_else_can() {
    // n = 4: the leader, a crashed replica and one other. The general protocol needs a
    // validator fresher than the provider; when the other is fresher, the leader sends.
    let base = quiet(Mode::Bft, 4, Variant::Cst, true);
    let order = positions(&base);
    let mut config = base.clone();
    config.leader = Some(order[1]);
    config.faulty = vec![(order[2], Byz::MuteAll)];
    let report = run(&config);
    assert!(fetched_from(&report).contains(&order[1]), "{report:?}");
}

#[test]
fn a_round_whose_seeders_truncated_restarts_with_a_newer_id() {
    let mut config = quiet(Mode::Bft, 4, Variant::Cst, true);
    // Data requests of the first round arrive 30 ticks late (within the idle timeout);
    // meanwhile the cluster moves one agreement a tick and checkpoints every few.
    config.advance_per_mille = 1_000;
    config.period = 12;
    config.first_round_stall = 30;
    let report = run(&config);
    assert!(report.restarts.contains(&RestartReason::Truncated), "{report:?}");
    assert!(report.targets.last() > report.targets.first(), "{:?}", report.targets);
}

/// Runs `config` with replica `at` faulty as `kind`; the oracle must hold.
fn with_byzantine(config: &SimConfig, at: ReplicaId, kind: Byz) -> Report {
    let mut config = config.clone();
    config.faulty = vec![(at, kind)];
    let report = run(&config);
    // Whatever it did, the state installed is the correct one (checked by `run`), and a
    // proof names only the faulty replica (checked by `run`).
    report
}

#[test]
fn each_byzantine_seeder_kind_at_each_role_is_survived() {
    for (mode, n, variant, f1) in [
        (Mode::Bft, 4, Variant::Cst, true),
        (Mode::Bft, 4, Variant::Cst, false),
        (Mode::Bft, 7, Variant::Cst, true),
        (Mode::Bft, 4, Variant::PbftLike, false),
        (Mode::Bft, 7, Variant::PbftLike, false),
    ] {
        let config = quiet(mode, n, variant, f1);
        for &at in &positions(&config) {
            for kind in Byz::ALL {
                with_byzantine(&config, at, kind);
            }
        }
    }
    let config = quiet(Mode::Crash, 3, Variant::Cst, true);
    for &at in &positions(&config) {
        for kind in Byz::CRASH {
            with_byzantine(&config, at, kind);
        }
    }
}

#[test]
fn a_provider_whose_checkpoint_bytes_do_not_match_its_claim_is_proven_faulty() {
    // General CST, n = 4: the provider is the 2nd freshest.
    let config = quiet(Mode::Bft, 4, Variant::Cst, false);
    let provider = positions(&config)[1];
    for kind in [Byz::WrongCheckpointBytes, Byz::StaleCheckpoint] {
        let report = with_byzantine(&config, provider, kind);
        assert!(
            matches!(faults_of(&report, provider).as_slice(), [Fault::CheckpointMismatch { .. }]),
            "{kind:?}: {report:?}"
        );
    }
}

#[test]
fn a_truncated_piece_is_malformed_and_proves_its_sender_faulty() {
    let config = quiet(Mode::Bft, 4, Variant::Cst, false);
    let provider = positions(&config)[1];
    let report = with_byzantine(&config, provider, Byz::TruncatedLog);
    assert_eq!(faults_of(&report, provider), vec![Fault::Malformed], "{report:?}");
}

#[test]
fn a_consistent_lie_fails_validation_and_the_next_seeder_serves() {
    // A provider that lies consistently (its checkpoint, its hash claims, its bytes
    // agree) passes the byte check; the replay's intermediate hash does not match the
    // validator's, and the state comes from the (f+2)-th.
    let config = quiet(Mode::Bft, 4, Variant::Cst, false);
    let order = positions(&config);
    for kind in [Byz::LyingCheckpoint, Byz::BadLogContent, Byz::ReorderedLog] {
        let report = with_byzantine(&config, order[1], kind);
        assert!(fetched_from(&report).contains(&order[2]), "{kind:?}: {report:?}");
        assert!(report.restarts.is_empty(), "{kind:?}: within one round: {report:?}");
    }
}

#[test]
fn a_validator_that_lies_about_hashes_is_named_once_the_state_validates() {
    // General CST, n = 4: the freshest validates; its lie makes the first provider's
    // state fail, the next provider's state validates with the first provider's data
    // (step 9), and the liar's hash contradicts what validated.
    let config = quiet(Mode::Bft, 4, Variant::Cst, false);
    let order = positions(&config);
    let report = with_byzantine(&config, order[0], Byz::WrongHashes);
    assert_eq!(faults_of(&report, order[0]), vec![Fault::Contradicted], "{report:?}");
    assert!(fetched_from(&report).contains(&order[2]));
    // A checkpoint hash other than its status's is caught at once.
    let report = with_byzantine(&config, order[0], Byz::Equivocate);
    assert_eq!(faults_of(&report, order[0]), vec![Fault::Equivocated], "{report:?}");
}

#[test]
fn mute_disconnecting_and_refusing_seeders_lead_to_the_next() {
    let config = quiet(Mode::Bft, 4, Variant::Cst, false);
    let provider = positions(&config)[1];
    for (kind, fault) in [
        (Byz::MuteAfterStatus, Fault::Mute),
        (Byz::Disconnect, Fault::Disconnected),
        (Byz::FalseTruncated, Fault::Unavailable(Unavailable::Truncated)),
    ] {
        let report = with_byzantine(&config, provider, kind);
        assert_eq!(faults_of(&report, provider), vec![fault], "{kind:?}: {report:?}");
        assert!(!fault.is_proof());
    }
}

#[test]
fn an_f1_round_that_fails_falls_back_to_the_general_protocol() {
    let config = quiet(Mode::Bft, 4, Variant::Cst, true);
    let order = positions(&config);
    // The 2nd (C_2's sender) lies consistently: the optimisation's check fails, the
    // general protocol takes the state from the 3rd.
    let report = with_byzantine(&config, order[1], Byz::LyingCheckpoint);
    let checkpoints_from: Vec<ReplicaId> = report
        .fetches
        .iter()
        .filter(|(_, w)| matches!(w, Want::Checkpoint { .. }))
        .map(|(r, _)| *r)
        .collect();
    assert_eq!(checkpoints_from.first(), Some(&order[1]));
    assert_eq!(checkpoints_from.last(), Some(&order[2]), "{report:?}");
    assert!(report.restarts.is_empty());
}
