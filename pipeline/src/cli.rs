//! Parsers of command-line values shared by the `pipeline` and `train` binaries: a value that
//! would make a run silently wrong (a NaN threshold, zero threads) is refused by clap with a
//! message naming the flag.

/// A finite `f32` (not NaN, not infinite).
pub fn finite_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("'{s}' is not a finite number"))
    }
}

/// A finite `f64` (not NaN, not infinite).
pub fn finite_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("'{s}' is not a finite number"))
    }
}

/// A count of at least 1 (e.g. `--threads`).
pub fn positive_usize(s: &str) -> Result<usize, String> {
    let v: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    if v == 0 {
        Err("must be at least 1".into())
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_finite_and_zero() {
        assert_eq!(finite_f32("323"), Ok(323.0));
        assert_eq!(finite_f32(" -1.5 "), Ok(-1.5));
        for bad in ["nan", "NaN", "inf", "-inf", "infinity", "1e39", "x"] {
            assert!(finite_f32(bad).is_err(), "{bad}");
        }
        assert!(finite_f64("nan").is_err() && finite_f64("1e308").is_ok());
        assert!(finite_f64("1e309").is_err());
        assert_eq!(positive_usize("4"), Ok(4));
        assert!(positive_usize("0").is_err() && positive_usize("-1").is_err());
    }
}
