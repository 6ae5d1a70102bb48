//! Configuration advice derived from the paper's model.

use crate::{Result, TuneError};

/// The smallest checkpoint period `P` (in requests) for which sequential checkpoints of
/// `replicas` replicas never overlap: the paper's Eq. (1), `P > n * C_max * T_max`, where
/// `checkpoint_seconds_max` is the longest a checkpoint takes (`C_max`) and
/// `throughput_ops_s_max` the highest request rate (`T_max`).
///
/// The paper's example: 4 replicas, a 1 GB state checkpointed in 15 s and 4700 ops/s give
/// `P > 282000`, so the result is 282001.
pub fn checkpoint_period_min(
    replicas: u32,
    checkpoint_seconds_max: f64,
    throughput_ops_s_max: f64,
) -> Result<u64> {
    let valid = |x: f64| x.is_finite() && x > 0.0;
    if replicas == 0 || !valid(checkpoint_seconds_max) || !valid(throughput_ops_s_max) {
        return Err(TuneError::InvalidOption(format!(
            "checkpoint period of {replicas} replicas, C_max {checkpoint_seconds_max} s, \
             T_max {throughput_ops_s_max} ops/s"
        )));
    }
    let bound = f64::from(replicas) * checkpoint_seconds_max * throughput_ops_s_max;
    if bound >= u64::MAX as f64 {
        return Err(TuneError::InvalidOption(format!("checkpoint period bound {bound} overflows")));
    }
    // The smallest integer strictly greater than the bound.
    Ok(bound.floor() as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_example_gives_a_period_just_above_282000() {
        assert_eq!(checkpoint_period_min(4, 15.0, 4700.0).expect("valid"), 282_001);
    }

    #[test]
    fn fractional_bound_rounds_up_and_nonsense_is_refused() {
        assert_eq!(checkpoint_period_min(3, 0.5, 3.0).expect("valid"), 5);
        assert!(checkpoint_period_min(0, 1.0, 1.0).is_err());
        assert!(checkpoint_period_min(4, -1.0, 1.0).is_err());
        assert!(checkpoint_period_min(4, 1.0, f64::NAN).is_err());
    }
}
