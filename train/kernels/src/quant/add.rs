//! Quantized add of two tensors with their own scales (the residual connections).

/// Quantized add of two tensors with their own scales:
/// `y = zp_o + round(((a - za) * Ma + (b - zb) * Mb) / 2^shift)`, `Ma = s_a / s_o * 2^shift`.
#[derive(Debug, Clone, Copy)]
pub struct QAddKernel {
    /// Zero points of a, b, output.
    pub za: i32,
    /// Zero point of b.
    pub zb: i32,
    /// Zero point of the output.
    pub zo: i32,
    /// Fixed-point multiplier of a.
    pub ma: i64,
    /// Fixed-point multiplier of b.
    pub mb: i64,
    /// Common shift.
    pub shift: u32,
    /// Output clamp.
    pub lo: i32,
    /// Output clamp.
    pub hi: i32,
}

impl QAddKernel {
    /// Prepares the multipliers for scales `sa`, `sb` -> `so`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(sa: f32, sb: f32, so: f32, za: i32, zb: i32, zo: i32, lo: i32, hi: i32) -> Self {
        let (ra, rb) = (sa as f64 / so as f64, sb as f64 / so as f64);
        let e = ra.max(rb).log2().ceil() as i32;
        let shift = (30 - e).clamp(1, 40) as u32;
        let s = 2f64.powi(shift as i32);
        Self {
            za,
            zb,
            zo,
            ma: (ra * s).round() as i64,
            mb: (rb * s).round() as i64,
            shift,
            lo,
            hi,
        }
    }

    /// Runs the add.
    pub fn run(&self, a: &[u8], b: &[u8], y: &mut [u8]) {
        let round = 1i64 << (self.shift - 1);
        for ((o, &qa), &qb) in y.iter_mut().zip(a).zip(b) {
            let v = ((qa as i64 - self.za as i64) * self.ma
                + (qb as i64 - self.zb as i64) * self.mb
                + round)
                >> self.shift;
            *o = (v as i32 + self.zo).clamp(self.lo, self.hi) as u8;
        }
    }
}
