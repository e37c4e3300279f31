//! Teacher-ensemble fusion, the paper's equation (4):
//!
//! ```text
//! h = sum_k alpha_k * logits_k + beta        (alpha_k per teacher, beta_c per class)
//! ```
//!
//! `alpha` and `beta` are fitted by minimizing the mean cross-entropy of `softmax(h)` against the
//! labels of the training clips. `h` is linear in the parameters and cross-entropy is convex in
//! the logits, so the problem is convex; with K + C parameters (a few dozen) a damped Newton
//! method with the exact Hessian converges in a handful of iterations. `beta` is only defined up
//! to a constant (softmax is shift invariant), so a small ridge `ridge * |beta|^2` pins it; we
//! report `beta` centred to zero mean.
//!
//! Fitted on a teacher's logits for its own training clips (in-sample, the reference systems'
//! default), the fit rewards confident teachers and can drive `alpha` large (sharpening the
//! targets rather than weighting the teachers). [`Fusion::fit_shrunk`] adds
//! `alpha_ridge * sum_k (alpha_k - 1/K)^2`, a ridge that shrinks the weights toward plain
//! averaging (`alpha_ridge -> inf` gives averaging back).

/// Fitted fusion weights.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Fusion {
    /// One weight per teacher.
    pub alpha: Vec<f64>,
    /// One bias per class (zero mean).
    pub beta: Vec<f64>,
}

/// How the fit went.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FitReport {
    /// Newton iterations taken.
    pub iterations: usize,
    /// Mean cross-entropy of the fused logits at the start (plain average, zero bias).
    pub initial_loss: f64,
    /// Mean cross-entropy at the end.
    pub final_loss: f64,
}

/// Errors of the fusion fit.
#[derive(Debug, thiserror::Error)]
pub enum FusionError {
    /// The inputs do not have consistent shapes.
    #[error("teacher fusion: {0}")]
    Shape(String),
}

impl Fusion {
    /// Plain averaging: `alpha_k = 1 / K`, `beta = 0`.
    pub fn average(n_teachers: usize, n_classes: usize) -> Self {
        Self {
            alpha: vec![1.0 / n_teachers as f64; n_teachers],
            beta: vec![0.0; n_classes],
        }
    }

    /// Fused logits of one clip: `h_c = sum_k alpha_k * logits[k][c] + beta_c`.
    /// `logits[k]` is teacher k's row for the clip.
    pub fn apply(&self, logits: &[&[f32]]) -> Vec<f32> {
        let mut h: Vec<f64> = self.beta.clone();
        for (a, row) in self.alpha.iter().zip(logits) {
            for (hc, &l) in h.iter_mut().zip(row.iter()) {
                *hc += a * l as f64;
            }
        }
        h.into_iter().map(|v| v as f32).collect()
    }

    /// Fits `alpha` and `beta` on `teachers[k]` (row-major `[n_clips, n_classes]` logits of
    /// teacher k) and `labels` (class index per clip) by damped Newton on the mean
    /// cross-entropy plus `ridge * |beta|^2`.
    pub fn fit(
        teachers: &[Vec<f32>],
        labels: &[usize],
        n_classes: usize,
        ridge: f64,
    ) -> Result<(Self, FitReport), FusionError> {
        Self::fit_shrunk(teachers, labels, n_classes, ridge, 0.0)
    }

    /// [`Fusion::fit`] with the extra penalty `alpha_ridge * sum_k (alpha_k - 1/K)^2` that
    /// shrinks the teacher weights toward plain averaging (see the module docs).
    pub fn fit_shrunk(
        teachers: &[Vec<f32>],
        labels: &[usize],
        n_classes: usize,
        ridge: f64,
        alpha_ridge: f64,
    ) -> Result<(Self, FitReport), FusionError> {
        let k = teachers.len();
        let n = labels.len();
        if k == 0 || n == 0 || n_classes < 2 {
            return Err(FusionError::Shape(format!(
                "need at least one teacher, one clip and two classes (got {k}, {n}, {n_classes})"
            )));
        }
        for (i, t) in teachers.iter().enumerate() {
            if t.len() != n * n_classes {
                return Err(FusionError::Shape(format!(
                    "teacher {i} has {} logits, expected {n} clips x {n_classes} classes",
                    t.len()
                )));
            }
        }
        if let Some(&bad) = labels.iter().find(|&&y| y >= n_classes) {
            return Err(FusionError::Shape(format!(
                "label {bad} out of range for {n_classes} classes"
            )));
        }
        let problem = Problem {
            teachers,
            labels,
            c: n_classes,
            ridge,
            alpha_ridge,
        };
        let mut theta: Vec<f64> = Fusion::average(k, n_classes).to_params();
        let initial_loss = problem.loss(&theta);
        let mut loss = initial_loss;
        let mut iterations = 0;
        for _ in 0..100 {
            iterations += 1;
            let (grad, hess) = problem.grad_hess(&theta);
            let step = solve_spd(hess, &grad);
            // Backtracking line search on the Newton direction.
            let mut t = 1.0;
            let mut improved = false;
            while t > 1e-8 {
                let cand: Vec<f64> = theta.iter().zip(&step).map(|(p, s)| p - t * s).collect();
                let l = problem.loss(&cand);
                if l <= loss {
                    let done = loss - l < 1e-12;
                    theta = cand;
                    loss = l;
                    improved = !done;
                    break;
                }
                t *= 0.5;
            }
            let gnorm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
            if !improved || gnorm < 1e-10 {
                break;
            }
        }
        let mut fusion = Fusion::from_params(&theta, k);
        let mean = fusion.beta.iter().sum::<f64>() / n_classes as f64;
        fusion.beta.iter_mut().for_each(|b| *b -= mean);
        let final_loss = problem.data_loss(&fusion.to_params());
        Ok((
            fusion,
            FitReport {
                iterations,
                initial_loss,
                final_loss,
            },
        ))
    }

    fn to_params(&self) -> Vec<f64> {
        self.alpha.iter().chain(&self.beta).copied().collect()
    }

    fn from_params(theta: &[f64], k: usize) -> Self {
        Self {
            alpha: theta[..k].to_vec(),
            beta: theta[k..].to_vec(),
        }
    }
}

/// Mean cross-entropy of fused logits against labels (a helper for reports and tests).
pub fn mean_cross_entropy(fusion: &Fusion, teachers: &[Vec<f32>], labels: &[usize]) -> f64 {
    let c = fusion.beta.len();
    Problem {
        teachers,
        labels,
        c,
        ridge: 0.0,
        alpha_ridge: 0.0,
    }
    .data_loss(&fusion.to_params())
}

/// Accuracy of the fused logits' argmax against labels.
pub fn accuracy(fusion: &Fusion, teachers: &[Vec<f32>], labels: &[usize]) -> f64 {
    let c = fusion.beta.len();
    let correct = labels
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let rows: Vec<&[f32]> = teachers.iter().map(|t| &t[i * c..(i + 1) * c]).collect();
            let h = fusion.apply(&rows);
            asc_kernels::math::argmax(&h) == y
        })
        .count();
    correct as f64 / labels.len().max(1) as f64
}

struct Problem<'a> {
    teachers: &'a [Vec<f32>],
    labels: &'a [usize],
    c: usize,
    ridge: f64,
    alpha_ridge: f64,
}

impl Problem<'_> {
    fn k(&self) -> usize {
        self.teachers.len()
    }

    /// Fused logits of clip i.
    fn logits(&self, theta: &[f64], i: usize, h: &mut [f64]) {
        let (k, c) = (self.k(), self.c);
        h.copy_from_slice(&theta[k..k + c]);
        for (kk, t) in self.teachers.iter().enumerate() {
            let row = &t[i * c..(i + 1) * c];
            for (hc, &l) in h.iter_mut().zip(row) {
                *hc += theta[kk] * l as f64;
            }
        }
    }

    /// Softmax probabilities in place; returns log-sum-exp.
    fn softmax(h: &mut [f64]) -> f64 {
        let m = h.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = h.iter().map(|x| (x - m).exp()).sum();
        let lse = m + s.ln();
        h.iter_mut().for_each(|x| *x = (*x - lse).exp());
        lse
    }

    fn data_loss(&self, theta: &[f64]) -> f64 {
        let mut h = vec![0.0; self.c];
        let mut total = 0.0;
        for (i, &y) in self.labels.iter().enumerate() {
            self.logits(theta, i, &mut h);
            let hy = h[y];
            let lse = Self::softmax(&mut h);
            total += lse - hy;
        }
        total / self.labels.len() as f64
    }

    fn loss(&self, theta: &[f64]) -> f64 {
        let k = self.k();
        let prior = 1.0 / k as f64;
        self.data_loss(theta)
            + self.ridge * theta[k..].iter().map(|b| b * b).sum::<f64>()
            + self.alpha_ridge
                * theta[..k]
                    .iter()
                    .map(|a| (a - prior) * (a - prior))
                    .sum::<f64>()
    }

    /// Gradient and Hessian of `loss`. With `J_i` the Jacobian of `h_i` in the parameters
    /// (`dh_c/dalpha_k = logits_k[c]`, `dh_c/dbeta_c' = [c == c']`) and `p_i = softmax(h_i)`:
    /// `g = mean_i J_i^T (p_i - e_y)`, `H = mean_i J_i^T (diag p_i - p_i p_i^T) J_i`.
    fn grad_hess(&self, theta: &[f64]) -> (Vec<f64>, Vec<Vec<f64>>) {
        let (k, c) = (self.k(), self.c);
        let np = k + c;
        let n = self.labels.len() as f64;
        let mut g = vec![0.0; np];
        let mut hess = vec![vec![0.0; np]; np];
        let mut p = vec![0.0; c];
        let mut jcols = vec![vec![0.0; c]; np]; // column j of J_i, as a vector over classes
        for (i, &y) in self.labels.iter().enumerate() {
            self.logits(theta, i, &mut p);
            Self::softmax(&mut p);
            for (kk, t) in self.teachers.iter().enumerate() {
                for (cc, &l) in t[i * c..(i + 1) * c].iter().enumerate() {
                    jcols[kk][cc] = l as f64;
                }
            }
            for cc in 0..c {
                jcols[k + cc].iter_mut().for_each(|v| *v = 0.0);
                jcols[k + cc][cc] = 1.0;
            }
            // r = p - e_y ; g += J^T r
            for (j, col) in jcols.iter().enumerate() {
                let mut s = 0.0;
                for cc in 0..c {
                    s += col[cc] * (p[cc] - if cc == y { 1.0 } else { 0.0 });
                }
                g[j] += s / n;
            }
            // H += J^T (diag p - p p^T) J = sum_c p_c a_c b_c - (p.a)(p.b)
            let pj: Vec<f64> = jcols
                .iter()
                .map(|col| col.iter().zip(&p).map(|(a, b)| a * b).sum())
                .collect();
            for a in 0..np {
                for b in a..np {
                    let mut s = 0.0;
                    for cc in 0..c {
                        s += p[cc] * jcols[a][cc] * jcols[b][cc];
                    }
                    let v = (s - pj[a] * pj[b]) / n;
                    hess[a][b] += v;
                    if a != b {
                        hess[b][a] += v;
                    }
                }
            }
        }
        for j in k..np {
            g[j] += 2.0 * self.ridge * theta[j];
            hess[j][j] += 2.0 * self.ridge;
        }
        for j in 0..k {
            g[j] += 2.0 * self.alpha_ridge * (theta[j] - 1.0 / k as f64);
            hess[j][j] += 2.0 * self.alpha_ridge;
        }
        (g, hess)
    }
}

/// Solves `H x = g` for a symmetric positive (semi-)definite `H` by Cholesky with a small
/// diagonal jitter added until the factorisation succeeds.
fn solve_spd(mut h: Vec<Vec<f64>>, g: &[f64]) -> Vec<f64> {
    let n = g.len();
    let scale = (0..n).map(|i| h[i][i].abs()).fold(0.0, f64::max).max(1e-12);
    let mut jitter = 1e-10 * scale;
    loop {
        if let Some(l) = cholesky(&h) {
            // forward then backward substitution
            let mut z = vec![0.0; n];
            for i in 0..n {
                let s: f64 = (0..i).map(|j| l[i][j] * z[j]).sum();
                z[i] = (g[i] - s) / l[i][i];
            }
            let mut x = vec![0.0; n];
            for i in (0..n).rev() {
                let s: f64 = (i + 1..n).map(|j| l[j][i] * x[j]).sum();
                x[i] = (z[i] - s) / l[i][i];
            }
            return x;
        }
        for (i, row) in h.iter_mut().enumerate() {
            row[i] += jitter;
        }
        jitter *= 10.0;
    }
}

fn cholesky(a: &[Vec<f64>]) -> Option<Vec<Vec<f64>>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                let d = a[i][i] - s;
                if d <= 0.0 || !d.is_finite() {
                    return None;
                }
                l[i][j] = d.sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Synthetic teachers: random logits; labels drawn from softmax(sum alpha_k L_k + beta).
    fn synthetic(alpha: &[f64], beta: &[f64], n: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
        let c = beta.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let teachers: Vec<Vec<f32>> = alpha
            .iter()
            .map(|_| (0..n * c).map(|_| rng.random_range(-2.0f32..2.0)).collect())
            .collect();
        let truth = Fusion {
            alpha: alpha.to_vec(),
            beta: beta.to_vec(),
        };
        let labels = (0..n)
            .map(|i| {
                let rows: Vec<&[f32]> = teachers.iter().map(|t| &t[i * c..(i + 1) * c]).collect();
                let mut h: Vec<f64> = truth.apply(&rows).into_iter().map(f64::from).collect();
                Problem::softmax(&mut h);
                let u: f64 = rng.random();
                let mut acc = 0.0;
                h.iter()
                    .position(|&p| {
                        acc += p;
                        u < acc
                    })
                    .unwrap_or(c - 1)
            })
            .collect();
        (teachers, labels)
    }

    #[test]
    fn fit_recovers_known_weights() {
        let alpha = [1.5, 0.2, 0.8];
        let beta = [0.6, -0.4, 0.1, -0.3];
        let (teachers, labels) = synthetic(&alpha, &beta, 20_000, 7);
        let (fit, report) = Fusion::fit(&teachers, &labels, 4, 1e-6).unwrap();
        for (a, t) in fit.alpha.iter().zip(alpha) {
            assert!((a - t).abs() < 0.08, "alpha {:?} vs {alpha:?}", fit.alpha);
        }
        for (b, t) in fit.beta.iter().zip(beta) {
            assert!((b - t).abs() < 0.08, "beta {:?} vs {beta:?}", fit.beta);
        }
        assert!(report.final_loss < report.initial_loss);
        assert!(report.iterations < 30);
        // The fit is at least as good as plain averaging on its own data.
        let avg = Fusion::average(3, 4);
        assert!(
            mean_cross_entropy(&fit, &teachers, &labels)
                <= mean_cross_entropy(&avg, &teachers, &labels)
        );
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (teachers, labels) = synthetic(&[0.7, 1.1], &[0.2, -0.1, 0.0], 50, 3);
        let p = Problem {
            teachers: &teachers,
            labels: &labels,
            c: 3,
            ridge: 0.01,
            alpha_ridge: 0.05,
        };
        let theta = vec![0.5, 0.9, 0.1, -0.2, 0.3];
        let (g, h) = p.grad_hess(&theta);
        let eps = 1e-6;
        for j in 0..theta.len() {
            let mut tp = theta.clone();
            let mut tm = theta.clone();
            tp[j] += eps;
            tm[j] -= eps;
            let fd = (p.loss(&tp) - p.loss(&tm)) / (2.0 * eps);
            assert!((fd - g[j]).abs() < 1e-6, "grad {j}: {fd} vs {}", g[j]);
            let (gp, _) = p.grad_hess(&tp);
            let (gm, _) = p.grad_hess(&tm);
            for i in 0..theta.len() {
                let fdh = (gp[i] - gm[i]) / (2.0 * eps);
                assert!(
                    (fdh - h[i][j]).abs() < 1e-5,
                    "hess {i},{j}: {fdh} vs {}",
                    h[i][j]
                );
            }
        }
    }

    #[test]
    fn alpha_ridge_shrinks_the_weights_toward_averaging() {
        // Confident in-sample-like teachers: the unpenalised fit scales alpha up.
        let (teachers, labels) = synthetic(&[3.0, 2.0], &[0.0, 0.0, 0.0], 400, 9);
        let fit = |r: f64| {
            Fusion::fit_shrunk(&teachers, &labels, 3, 1e-4, r)
                .unwrap()
                .0
        };
        let (free, mild, strong) = (fit(0.0), fit(0.05), fit(1e6));
        let dist = |f: &Fusion| f.alpha.iter().map(|a| (a - 0.5).abs()).sum::<f64>();
        assert!(
            dist(&mild) < dist(&free),
            "{:?} vs {:?}",
            mild.alpha,
            free.alpha
        );
        for a in &strong.alpha {
            assert!((a - 0.5).abs() < 1e-4, "alpha {a} not shrunk to 1/K");
        }
        // The penalty only adds to the data loss: the shrunk fit never beats the free one on it.
        assert!(
            mean_cross_entropy(&free, &teachers, &labels)
                <= mean_cross_entropy(&mild, &teachers, &labels) + 1e-12
        );
    }

    #[test]
    fn apply_is_the_weighted_sum() {
        let f = Fusion {
            alpha: vec![2.0, -1.0],
            beta: vec![0.5, 0.0],
        };
        let h = f.apply(&[&[1.0, 2.0], &[3.0, 5.0]]);
        assert_eq!(h, vec![2.0 - 3.0 + 0.5, 4.0 - 5.0]);
        assert!(Fusion::fit(&[vec![0.0; 3]], &[0, 1], 2, 0.0).is_err());
    }
}
