//! The floor every run must beat: a linear probe on log-mel statistics.
//!
//! Features of a clip: per mel bin, the mean and the standard deviation over time of its
//! log-mel (`2 F` values, 512 for 256 bins), standardised with the training rows' mean and
//! standard deviation per feature. Model: multinomial logistic regression
//! `p(y | x) = softmax(W x + b)`, fitted on the training rows by minimising
//!
//! ```text
//! J(W, b) = (1/n) sum_i -log softmax(W x_i + b)[y_i]  +  (lambda / 2) ||W||^2
//! ```
//!
//! (the bias is not penalised), a smooth convex problem solved by L-BFGS ([`fit_logistic`]).
//! `lambda` is chosen from [`LAMBDAS`] by [`CV_FOLDS`]-fold cross-validation over recording
//! locations of the training clips (never the test set), then the probe is refitted on all of
//! them. A fixed `lambda = 1/n` (scikit-learn's default `C = 1`) fits 450 or 1,700 demo clips
//! exactly (training accuracy 100 %, test log-loss 6.6-13.7) and scored 38.7 % / 58.6 % on the
//! 450-clip subset / the demo set: an overfitted floor, and a slow fit (500 iterations). It is
//! evaluated
//! exactly like a model ([`crate::metrics::EvalReport`]: macro accuracy, per class, per device,
//! seen/unseen) on the original test rows.
//!
//! Training rows: the original rows of the run's training clips (its split, without the
//! validation or hold-out fold); no DIR, replay or batch augmentation, so the floor is what the
//! log-mel statistics of the clips alone give. On a small real set (447 device-a clips, one
//! unseen phone) it scored 52.5 % macro accuracy, where a 7-update student scored 2.2 %.
//!
//! The solver is a few dozen lines of L-BFGS (Nocedal & Wright, algorithm 7.4, with a
//! backtracking Armijo line search) rather than a dependency: the problem has 512 x 10
//! unknowns and a closed-form gradient.

use std::collections::BTreeSet;

use data_specs::ClipSet;

use crate::evaluate::originals;
use crate::loader::{FoldFilter, Loader, LoaderConfig, Selection, ShardSet};
use crate::metrics::{EvalAccumulator, EvalReport};
use crate::trainer::{Result, TrainError};

/// Candidate L2 weights of the floor's logistic regression (mean-loss units).
pub const LAMBDAS: [f64; 3] = [1e-3, 1e-2, 1e-1];
/// Location folds of the floor's cross-validation.
pub const CV_FOLDS: u32 = 3;
/// L-BFGS iterations of each cross-validation fit.
const CV_MAX_ITER: usize = 150;

/// Options of the L-BFGS solver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LbfgsOptions {
    /// Most iterations.
    pub max_iter: usize,
    /// Stop when the gradient's largest absolute entry is below this.
    pub grad_tol: f64,
    /// Correction pairs kept.
    pub memory: usize,
}

impl Default for LbfgsOptions {
    fn default() -> Self {
        Self {
            max_iter: 500,
            grad_tol: 1e-6,
            memory: 10,
        }
    }
}

/// A fitted multinomial logistic regression: `logits = W x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Logistic {
    /// Classes `K`.
    pub n_classes: usize,
    /// Features `D`.
    pub n_features: usize,
    /// `W`, row-major `[K, D]`.
    pub weights: Vec<f64>,
    /// `b`, `[K]`.
    pub bias: Vec<f64>,
    /// Objective value at the solution.
    pub objective: f64,
    /// L-BFGS iterations used.
    pub iterations: usize,
}

impl Logistic {
    /// Logits of one feature row.
    pub fn logits(&self, x: &[f64]) -> Vec<f64> {
        (0..self.n_classes)
            .map(|k| {
                let w = &self.weights[k * self.n_features..(k + 1) * self.n_features];
                self.bias[k] + w.iter().zip(x).map(|(a, b)| a * b).sum::<f64>()
            })
            .collect()
    }
}

/// Objective `J` and its gradient at `theta = [W (K x D row-major), b (K)]` for features `x`
/// (row-major `[n, D]`), labels `y` and L2 weight `lambda` (formula in the module docs).
pub fn objective_and_gradient(
    theta: &[f64],
    x: &[f64],
    y: &[usize],
    n_classes: usize,
    lambda: f64,
    grad: &mut [f64],
) -> f64 {
    let n = y.len();
    let d = x.len().checked_div(n).unwrap_or(0);
    let (k, wlen) = (n_classes, n_classes * d);
    grad.iter_mut().for_each(|g| *g = 0.0);
    let mut loss = 0.0;
    let mut z = vec![0.0; k];
    for (row, &label) in x.chunks_exact(d.max(1)).zip(y) {
        for (c, zc) in z.iter_mut().enumerate() {
            let w = &theta[c * d..(c + 1) * d];
            *zc = theta[wlen + c] + w.iter().zip(row).map(|(a, b)| a * b).sum::<f64>();
        }
        let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
        loss += m + sum.ln() - z[label];
        for c in 0..k {
            // d/dz_c of -log softmax(z)[y] = p_c - [c == y].
            let g = (z[c] - m).exp() / sum - f64::from(u8::from(c == label));
            let gw = &mut grad[c * d..(c + 1) * d];
            gw.iter_mut().zip(row).for_each(|(a, b)| *a += g * b);
            grad[wlen + c] += g;
        }
    }
    let inv = 1.0 / n.max(1) as f64;
    grad.iter_mut().for_each(|g| *g *= inv);
    let mut reg = 0.0;
    for (g, w) in grad[..wlen].iter_mut().zip(&theta[..wlen]) {
        *g += lambda * w;
        reg += w * w;
    }
    loss * inv + 0.5 * lambda * reg
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimises a smooth function `f(theta, grad) -> value` from `theta` by L-BFGS with a
/// backtracking Armijo line search; returns the iterations used.
pub fn lbfgs(
    theta: &mut [f64],
    opts: &LbfgsOptions,
    mut f: impl FnMut(&[f64], &mut [f64]) -> f64,
) -> (f64, usize) {
    let p = theta.len();
    let mut g = vec![0.0; p];
    let mut value = f(theta, &mut g);
    let mut pairs: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    let mut g_new = vec![0.0; p];
    let mut trial = vec![0.0; p];
    for iter in 0..opts.max_iter {
        if g.iter().fold(0.0f64, |m, v| m.max(v.abs())) < opts.grad_tol {
            return (value, iter);
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = pairs.back() {
            let gamma = dot(s, y) / dot(y, y);
            q.iter_mut().for_each(|v| *v *= gamma);
        }
        for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut dir: Vec<f64> = q.into_iter().map(|v| -v).collect();
        let mut slope = dot(&g, &dir);
        if slope >= 0.0 {
            // Not a descent direction (numerical trouble): restart from steepest descent.
            pairs.clear();
            dir = g.iter().map(|v| -v).collect();
            slope = dot(&g, &dir);
        }
        // First iteration: a step of unit length along the steepest descent.
        let mut step = if pairs.is_empty() {
            1.0 / dot(&dir, &dir).sqrt().max(1e-12)
        } else {
            1.0
        };
        let mut accepted = false;
        for _ in 0..60 {
            trial
                .iter_mut()
                .zip(theta.iter().zip(&dir))
                .for_each(|(t, (x, d))| *t = x + step * d);
            let v = f(&trial, &mut g_new);
            if v <= value + 1e-4 * step * slope {
                let s: Vec<f64> = dir.iter().map(|d| step * d).collect();
                let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
                let sy = dot(&s, &y);
                if sy > 1e-12 {
                    if pairs.len() == opts.memory.max(1) {
                        pairs.pop_front();
                    }
                    pairs.push_back((s, y, 1.0 / sy));
                }
                theta.copy_from_slice(&trial);
                g.copy_from_slice(&g_new);
                let done = (value - v).abs() <= 1e-14 * value.abs().max(1.0);
                value = v;
                accepted = true;
                if done {
                    return (value, iter + 1);
                }
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            return (value, iter);
        }
    }
    (value, opts.max_iter)
}

/// Fits the multinomial logistic regression of the module docs on features `x` (row-major
/// `[n, n_features]`, already standardised) and labels `y`, with L2 weight `lambda`.
pub fn fit_logistic(
    x: &[f64],
    y: &[usize],
    n_classes: usize,
    lambda: f64,
    opts: &LbfgsOptions,
) -> Logistic {
    let n_features = x.len().checked_div(y.len()).unwrap_or(0);
    let mut theta = vec![0.0; n_classes * (n_features + 1)];
    let (objective, iterations) = lbfgs(&mut theta, opts, |t, g| {
        objective_and_gradient(t, x, y, n_classes, lambda, g)
    });
    let wlen = n_classes * n_features;
    Logistic {
        n_classes,
        n_features,
        bias: theta[wlen..].to_vec(),
        weights: theta[..wlen].to_vec(),
        objective,
        iterations,
    }
}

/// Per-mel-bin mean and standard deviation over time of one log-mel `[F, T]` (row-major):
/// `[mean_0 .. mean_{F-1}, std_0 .. std_{F-1}]` (population std).
pub fn logmel_stats(logmel: &[f32], n_mels: usize, out: &mut Vec<f64>) {
    let t = logmel.len() / n_mels.max(1);
    let start = out.len();
    out.resize(start + 2 * n_mels, 0.0);
    if t == 0 {
        return;
    }
    for (m, row) in logmel.chunks_exact(t.max(1)).take(n_mels).enumerate() {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / t as f64;
        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / t as f64;
        out[start + m] = mean;
        out[start + n_mels + m] = var.sqrt();
    }
}

/// Features, labels and rows of every labelled row of `selection` (originals, storage order).
fn features_of(set: &ShardSet, selection: Selection) -> Result<(Vec<f64>, Vec<usize>, Vec<u32>)> {
    let n_mels = set.meta().frontend.n_mels;
    let loader = Loader::new(
        set,
        selection,
        LoaderConfig {
            batch_size: 256,
            shuffle: false,
            drop_last: false,
            ..LoaderConfig::default()
        },
    )?;
    let (mut x, mut y, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    if loader.epoch_len() == 0 {
        return Ok((x, y, rows));
    }
    for batch in loader.epoch(0) {
        let batch = batch?;
        let (mels, frames) = batch.logmel_shape();
        let len = mels * frames;
        for ((lm, &label), &row) in batch
            .logmel()
            .chunks_exact(len)
            .zip(batch.labels())
            .zip(batch.rows())
        {
            if label >= 0 {
                logmel_stats(lm, n_mels, &mut x);
                y.push(label as usize);
                rows.push(row);
            }
        }
    }
    Ok((x, y, rows))
}

/// The floor of a run: the fitted probe and its evaluation on the test set.
#[derive(Debug, Clone)]
pub struct Floor {
    /// Training rows the probe was fitted on.
    pub n_train: usize,
    /// The evaluation on the original test rows (same metrics as a model's).
    pub eval: EvalReport,
    /// Training accuracy of the probe (a fraction).
    pub train_accuracy: f64,
    /// L-BFGS iterations of the final fit.
    pub iterations: usize,
    /// The L2 weight the cross-validation chose.
    pub lambda: f64,
    /// Mean held-out accuracy of each candidate of [`LAMBDAS`] (empty when the training clips
    /// span fewer than 2 location folds and the middle candidate was used).
    pub cv_accuracy: Vec<f64>,
    /// Wall-clock seconds (reading the features, fitting, evaluating).
    pub seconds: f64,
}

/// Fits the floor on the original rows of the training clips of split `split` (without the rows
/// of `exclude_fold`, e.g. the validation fold) and evaluates it on the original test rows;
/// `seen` are the devices of the training selection.
pub fn floor(
    set: &ShardSet,
    split: u8,
    exclude_fold: Option<crate::loader::Fold>,
    seen: BTreeSet<String>,
) -> Result<Floor> {
    let t0 = std::time::Instant::now();
    let meta = set.meta();
    let k = meta.n_classes();
    let train_sel = Selection {
        max_split: Some(split),
        fold: exclude_fold.map(FoldFilter::Without),
        ..originals(ClipSet::Train)
    };
    let (mut x, y, train_rows) = features_of(set, train_sel)?;
    if y.is_empty() {
        return Err(TrainError::Config(format!(
            "the floor has no labelled training rows (split {split})"
        )));
    }
    let d = x.len() / y.len();
    // Standardise each feature with the training rows' mean and std.
    let mut mu = vec![0.0; d];
    let mut sd = vec![0.0; d];
    for row in x.chunks_exact(d) {
        mu.iter_mut().zip(row).for_each(|(m, v)| *m += v);
    }
    mu.iter_mut().for_each(|m| *m /= y.len() as f64);
    for row in x.chunks_exact(d) {
        sd.iter_mut()
            .zip(row.iter().zip(&mu))
            .for_each(|(s, (v, m))| *s += (v - m).powi(2));
    }
    sd.iter_mut()
        .for_each(|s| *s = (*s / y.len() as f64).sqrt().max(1e-8));
    let standardise = |x: &mut [f64]| {
        for row in x.chunks_exact_mut(d) {
            for ((v, m), s) in row.iter_mut().zip(&mu).zip(&sd) {
                *v = (*v - m) / s;
            }
        }
    };
    standardise(&mut x);
    let folds = set.location_folds(CV_FOLDS, Some(split));
    let fold_of: Vec<Option<u32>> = train_rows
        .iter()
        .map(|&r| folds.fold_of(set.row_info(r).location_key))
        .collect();
    let cv_accuracy = cross_validate(&x, &y, &fold_of, k);
    let lambda = cv_accuracy
        .iter()
        .enumerate()
        // The best mean held-out accuracy; ties go to the larger lambda (simpler model).
        .fold(None, |b: Option<(usize, f64)>, (i, &a)| match b {
            Some((_, ba)) if a < ba => b,
            _ => Some((i, a)),
        })
        .map_or(LAMBDAS[1], |(i, _)| LAMBDAS[i]);
    let model = fit_logistic(&x, &y, k, lambda, &LbfgsOptions::default());
    let argmax = |z: &[f64]| (0..z.len()).fold(0, |b, c| if z[c] > z[b] { c } else { b });
    let train_hits = x
        .chunks_exact(d)
        .zip(&y)
        .filter(|(row, label)| argmax(&model.logits(row)) == **label)
        .count();
    let (mut xt, yt, rows) = features_of(set, originals(ClipSet::Test))?;
    standardise(&mut xt);
    let mut acc = EvalAccumulator::new(
        meta.labels.names().map(str::to_string).collect(),
        meta.devices.names().map(str::to_string).collect(),
        seen,
    );
    for ((row, &label), &r) in xt.chunks_exact(d.max(1)).zip(&yt).zip(&rows) {
        let z: Vec<f32> = model.logits(row).into_iter().map(|v| v as f32).collect();
        acc.push(&z, label, set.row_info(r).device)?;
    }
    Ok(Floor {
        n_train: y.len(),
        eval: acc.finish(),
        train_accuracy: train_hits as f64 / y.len() as f64,
        iterations: model.iterations,
        lambda,
        cv_accuracy,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Mean held-out accuracy of each candidate of [`LAMBDAS`] over the location folds (`fold_of`
/// per row; rows in no fold always train); empty when fewer than 2 folds hold rows. The fits run
/// in parallel.
fn cross_validate(x: &[f64], y: &[usize], fold_of: &[Option<u32>], k: usize) -> Vec<f64> {
    use rayon::prelude::*;
    let mut present: Vec<u32> = fold_of.iter().flatten().copied().collect();
    present.sort_unstable();
    present.dedup();
    if present.len() < 2 || y.is_empty() {
        return Vec::new();
    }
    let d = x.len() / y.len();
    let opts = LbfgsOptions {
        max_iter: CV_MAX_ITER,
        ..LbfgsOptions::default()
    };
    let jobs: Vec<(usize, u32)> = (0..LAMBDAS.len())
        .flat_map(|l| present.iter().map(move |&f| (l, f)))
        .collect();
    let accs: Vec<(usize, f64)> = jobs
        .par_iter()
        .map(|&(l, f)| {
            let (mut xt, mut yt) = (Vec::new(), Vec::new());
            for ((row, &label), fo) in x.chunks_exact(d).zip(y).zip(fold_of) {
                if *fo != Some(f) {
                    xt.extend_from_slice(row);
                    yt.push(label);
                }
            }
            let m = fit_logistic(&xt, &yt, k, LAMBDAS[l], &opts);
            let (mut n, mut hit) = (0usize, 0usize);
            for ((row, &label), fo) in x.chunks_exact(d).zip(y).zip(fold_of) {
                if *fo == Some(f) {
                    let z = m.logits(row);
                    let pred = (0..k).fold(0, |b, c| if z[c] > z[b] { c } else { b });
                    n += 1;
                    hit += usize::from(pred == label);
                }
            }
            (l, hit as f64 / n.max(1) as f64)
        })
        .collect();
    (0..LAMBDAS.len())
        .map(|l| {
            let a: Vec<f64> = accs
                .iter()
                .filter(|(i, _)| *i == l)
                .map(|(_, a)| *a)
                .collect();
            a.iter().sum::<f64>() / a.len().max(1) as f64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Newton's method with the exact Hessian of `J`, solved by Gaussian elimination: an
    /// independent solver for small problems.
    fn newton(x: &[f64], y: &[usize], k: usize, lambda: f64) -> Vec<f64> {
        let n = y.len();
        let d = x.len() / n;
        let p = k * (d + 1);
        let mut theta = vec![0.0; p];
        // Augmented features [x, 1] so that parameter (c, j) sits at c * (d + 1) + j here.
        for _ in 0..50 {
            let mut g = vec![0.0; p];
            let mut h = vec![vec![0.0; p]; p];
            for (row, &label) in x.chunks_exact(d).zip(y) {
                let xa: Vec<f64> = row.iter().copied().chain([1.0]).collect();
                let z: Vec<f64> = (0..k)
                    .map(|c| (0..=d).map(|j| theta[c * (d + 1) + j] * xa[j]).sum())
                    .collect();
                let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
                let s: f64 = e.iter().sum();
                let pr: Vec<f64> = e.iter().map(|v| v / s).collect();
                for c in 0..k {
                    let r = pr[c] - f64::from(u8::from(c == label));
                    for j in 0..=d {
                        g[c * (d + 1) + j] += r * xa[j] / n as f64;
                        for c2 in 0..k {
                            let w = pr[c] * (f64::from(u8::from(c == c2)) - pr[c2]);
                            for j2 in 0..=d {
                                h[c * (d + 1) + j][c2 * (d + 1) + j2] +=
                                    w * xa[j] * xa[j2] / n as f64;
                            }
                        }
                    }
                }
            }
            for c in 0..k {
                for j in 0..d {
                    let i = c * (d + 1) + j;
                    g[i] += lambda * theta[i];
                    h[i][i] += lambda;
                }
            }
            // The softmax's shift invariance leaves the bias block singular: a tiny ridge.
            for (i, row) in h.iter_mut().enumerate() {
                row[i] += 1e-12;
            }
            // Solve h * step = g (Gaussian elimination with partial pivoting).
            let mut a: Vec<Vec<f64>> = h
                .into_iter()
                .zip(&g)
                .map(|(mut r, gi)| {
                    r.push(*gi);
                    r
                })
                .collect();
            for col in 0..p {
                let piv = (col..p)
                    .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
                    .unwrap();
                a.swap(col, piv);
                for r in col + 1..p {
                    let (top, bottom) = a.split_at_mut(r);
                    let (pivot, row) = (&top[col], &mut bottom[0]);
                    let f = row[col] / pivot[col];
                    for (v, pv) in row[col..=p].iter_mut().zip(&pivot[col..=p]) {
                        *v -= f * pv;
                    }
                }
            }
            let mut step = vec![0.0; p];
            for r in (0..p).rev() {
                let s: f64 = (r + 1..p).map(|cc| a[r][cc] * step[cc]).sum();
                step[r] = (a[r][p] - s) / a[r][r];
            }
            theta.iter_mut().zip(&step).for_each(|(t, s)| *t -= s);
        }
        theta
    }

    fn problem() -> (Vec<f64>, Vec<usize>) {
        // 3 classes, 2 features, 60 overlapping points from a fixed LCG.
        let mut state = 12345u64;
        let mut u = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let centres = [(0.0, 0.0), (1.0, 0.5), (-0.5, 1.0)];
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..60 {
            let c = i % 3;
            x.push(centres[c].0 + 1.2 * (u() - 0.5) * 2.0);
            x.push(centres[c].1 + 1.2 * (u() - 0.5) * 2.0);
            y.push(c);
        }
        (x, y)
    }

    #[test]
    fn lbfgs_matches_newtons_method_on_a_small_problem() {
        let (x, y) = problem();
        let lambda = 0.05;
        let opts = LbfgsOptions {
            max_iter: 2_000,
            grad_tol: 1e-10,
            ..LbfgsOptions::default()
        };
        let fit = fit_logistic(&x, &y, 3, lambda, &opts);
        // The default tolerance (what the floor uses) is already close.
        let quick = fit_logistic(&x, &y, 3, lambda, &LbfgsOptions::default());
        assert!((quick.objective - fit.objective).abs() < 1e-9, "{quick:?}");
        let reference = newton(&x, &y, 3, lambda);
        // Class probabilities are what the softmax identifies (logits up to a shared shift);
        // the weights are identified too (the L2 term fixes their shift).
        for (row, _) in x.chunks_exact(2).zip(&y) {
            let z = fit.logits(row);
            let zr: Vec<f64> = (0..3)
                .map(|c| {
                    reference[c * 3] * row[0] + reference[c * 3 + 1] * row[1] + reference[c * 3 + 2]
                })
                .collect();
            let soft = |z: &[f64]| {
                let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
                z.iter().map(|v| (v - m).exp() / s).collect::<Vec<_>>()
            };
            for (a, b) in soft(&z).iter().zip(soft(&zr)) {
                assert!((a - b).abs() < 1e-6, "{a} vs {b}");
            }
        }
        for c in 0..3 {
            for j in 0..2 {
                let (a, b) = (fit.weights[c * 2 + j], reference[c * 3 + j]);
                assert!((a - b).abs() < 1e-5, "w[{c}][{j}] {a} vs {b}");
            }
        }
        // The gradient is right: central finite differences of the objective.
        let p = 3 * 3;
        let theta: Vec<f64> = (0..p).map(|i| 0.1 * i as f64 - 0.3).collect();
        let mut g = vec![0.0; p];
        objective_and_gradient(&theta, &x, &y, 3, lambda, &mut g);
        let mut scratch = vec![0.0; p];
        for i in 0..p {
            let (mut a, mut b) = (theta.clone(), theta.clone());
            a[i] += 1e-6;
            b[i] -= 1e-6;
            let fd = (objective_and_gradient(&a, &x, &y, 3, lambda, &mut scratch)
                - objective_and_gradient(&b, &x, &y, 3, lambda, &mut scratch))
                / 2e-6;
            assert!((fd - g[i]).abs() < 1e-6, "grad {i}: {fd} vs {}", g[i]);
        }
    }

    #[test]
    fn one_hot_groups_reach_the_closed_form_class_frequencies() {
        // Features: a one-hot group indicator (two groups), no penalty that matters: the
        // maximum-likelihood softmax equals each group's empirical class frequencies.
        let counts = [[6usize, 3, 1], [2, 2, 8]];
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (g, row) in counts.iter().enumerate() {
            for (c, &n) in row.iter().enumerate() {
                for _ in 0..n {
                    x.extend_from_slice(if g == 0 { &[1.0, 0.0] } else { &[0.0, 1.0] });
                    y.push(c);
                }
            }
        }
        let opts = LbfgsOptions {
            max_iter: 2_000,
            grad_tol: 1e-10,
            ..LbfgsOptions::default()
        };
        let fit = fit_logistic(&x, &y, 3, 1e-10, &opts);
        for (g, row) in counts.iter().enumerate() {
            let feat = if g == 0 { [1.0, 0.0] } else { [0.0, 1.0] };
            let z = fit.logits(&feat);
            let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let s: f64 = z.iter().map(|v| (v - m).exp()).sum();
            let total: usize = row.iter().sum();
            for c in 0..3 {
                let p = (z[c] - m).exp() / s;
                let want = row[c] as f64 / total as f64;
                assert!(
                    (p - want).abs() < 1e-4,
                    "group {g} class {c}: {p} vs {want}"
                );
            }
        }
    }

    #[test]
    fn logmel_stats_are_per_bin_mean_and_std_over_time() {
        // 2 bins x 4 frames.
        let lm = [1.0f32, 2.0, 3.0, 4.0, -1.0, -1.0, -1.0, -1.0];
        let mut out = Vec::new();
        logmel_stats(&lm, 2, &mut out);
        assert_eq!(out[0], 2.5);
        assert_eq!(out[1], -1.0);
        assert!((out[2] - 1.25f64.sqrt()).abs() < 1e-12);
        assert_eq!(out[3], 0.0);
    }
}
