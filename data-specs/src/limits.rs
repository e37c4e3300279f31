//! The DCASE2024 Task 1 complexity limits, in one place.
//!
//! The task limits a system to **128,000 bytes of parameter memory** and **30 million MACs**
//! for one 1 s clip. The values are those of the official complexity helper of the task's
//! baseline (`helpers/nessi.py` of CPJKU/dcase2024_task1_baseline: `MAX_PARAMS_MEMORY =
//! 128_000`, `MAX_MACS = 30_000_000`): the "128 kB" of the task page is 128 x 1000 bytes, not
//! 128 x 1024. Parameter memory is counted at the precision the parameters are stored in, so
//! an int8 model may have 128,000 parameters. The official counter sums torchinfo's parameters
//! and multiply-adds; the toolkit's counter (`train::complexity`) follows it and adds the
//! selective scan, which torchinfo does not see.

/// Maximum parameter memory of a DCASE2024 Task 1 system, in bytes (`MAX_PARAMS_MEMORY`).
pub const MAX_PARAM_BYTES: usize = 128_000;

/// Maximum multiply-accumulate operations for one 1 s clip (`MAX_MACS`).
pub const MAX_MACS: u64 = 30_000_000;

/// `bytes` as a percentage of [`MAX_PARAM_BYTES`].
pub fn param_memory_percent(bytes: usize) -> f64 {
    100.0 * bytes as f64 / MAX_PARAM_BYTES as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_is_decimal_kilobytes() {
        // The README's int8 student: 107,293 bytes is 83.8 % of 128,000 bytes (it would be
        // 81.9 % of 131,072).
        assert_eq!(format!("{:.1}", param_memory_percent(107_293)), "83.8");
        assert_eq!(param_memory_percent(MAX_PARAM_BYTES), 100.0);
    }
}
