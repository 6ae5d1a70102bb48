//! The `ckpt` stage: writes the checkpoints the exec stage hands it (a view of the
//! executor taken between two batches) into the replica's checkpoint directory, one at
//! a time, while execution goes on; and warns when the period is too short for the
//! checkpoint time it measures (the paper's Eq. (1)).

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use dura_snapshot::{CheckpointStore, Dir};

use super::durability::{CheckpointDone, CheckpointJob};
use crate::service::StateView;

/// What the stage knows of the cluster, for Eq. (1).
#[derive(Debug, Clone, Copy)]
pub struct PeriodCheck {
    /// Replicas in the cluster.
    pub n: u32,
    /// The configured period P.
    pub period: u64,
}

/// Writes every job from `jobs` into `store` and answers on `done`; ends when `jobs`
/// closes or `done` is gone.
pub fn run_checkpoint_stage<D: Dir, V: StateView>(
    id: u32,
    service: &'static str,
    store: CheckpointStore<D>,
    jobs: Receiver<CheckpointJob<V>>,
    done: Sender<CheckpointDone>,
    check: PeriodCheck,
) {
    // (time, ordered requests) at the previous job: the request rate between two
    // checkpoints is T in Eq. (1).
    let mut previous: Option<(Instant, u64)> = None;
    let mut warned = false;
    for job in jobs {
        let started = Instant::now();
        let written = crate::checkpoint::write_checkpoint(
            &store,
            service,
            job.agreement_id,
            job.ordered_requests,
            &job.view,
        );
        // The view's structures are shared with the live state: drop them here, not on
        // the exec thread.
        drop(job.view);
        let seconds = started.elapsed().as_secs_f64();
        let result = match written {
            Ok(written) => {
                log::info!(
                    "replica {id}: checkpoint at agreement {} written: {} bytes in {:.3} s ({})",
                    job.agreement_id,
                    written.file_bytes,
                    seconds,
                    written.file_name
                );
                if let Some((at, ordered)) = previous {
                    let interval = started.duration_since(at).as_secs_f64();
                    let rate = job.ordered_requests.saturating_sub(ordered) as f64 / interval;
                    if let Ok(min) = dura_tuning::checkpoint_period_min(check.n, seconds, rate)
                        && check.period < min
                        && !warned
                    {
                        warned = true;
                        log::warn!(
                            "replica {id}: checkpoint_period {} is below Eq. (1) for this checkpoint ({seconds:.2} s at {rate:.0} requests/s over {} replicas): checkpoints of different replicas may overlap; use at least {min}",
                            check.period,
                            check.n
                        );
                    }
                }
                Ok(())
            }
            Err(error) => Err(error.to_string()),
        };
        previous = Some((started, job.ordered_requests));
        if done.send(CheckpointDone { agreement_id: job.agreement_id, result }).is_err() {
            break;
        }
    }
}
