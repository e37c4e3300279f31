//! `y = a + s r` for same-shaped `a`, `r` and a learned scalar `s` (the parallel Mamba block's
//! skip connection, `mamba(g) + skip_scale g`) as one op on the rayon pool, with its backward
//! pass (burn backend extension).
//!
//! burn runs it as a broadcast multiply and an add on the calling thread, and the backward pass
//! as two more multiplies and a sum; here `y` is one parallel pass, and the backward pass
//! hands `dy` on to `a` unchanged and computes `dr = s dy` and `ds = sum(dy r)` in one parallel
//! pass (per-block partial sums added in block order: deterministic).

use super::{from_host, host_view, register_host_grads, written_by};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use rayon::prelude::*;

/// Elements per rayon task (and per partial sum of `ds`).
const BLOCK: usize = 1 << 14;

/// Backends that can run the fused scaled add.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait ScaledAddOps: Backend {
    /// `a + s r` for `a`, `r` of one shape and `s: [1]` (checked by the caller).
    fn scaled_add_fused(
        a: FloatTensor<Self>,
        r: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// Forward pass: `a + s r`.
pub fn forward_host(a: &[f32], r: &[f32], s: f32) -> Vec<f32> {
    assert_eq!(a.len(), r.len(), "scaled add: sizes");
    let fill = |y: &mut [std::mem::MaybeUninit<f32>]| {
        y.par_chunks_mut(BLOCK)
            .zip(a.par_chunks(BLOCK).zip(r.par_chunks(BLOCK)))
            .for_each(|(yb, (ab, rb))| {
                for ((o, &av), &rv) in yb.iter_mut().zip(ab).zip(rb) {
                    o.write(av + s * rv);
                }
            })
    };
    // SAFETY: the blocks of `y` pair with those of `a` (same length), each element written.
    unsafe { written_by(a.len(), fill) }
}

/// Backward pass for `r` and `s`: `(s dy, sum(dy r))`.
pub fn backward_host(r: &[f32], s: f32, dy: &[f32]) -> (Vec<f32>, f32) {
    assert_eq!(r.len(), dy.len(), "scaled add: sizes");
    let blocks = r.len().div_ceil(BLOCK);
    let mut partials = vec![0.0f32; blocks];
    let fill = |dr: &mut [std::mem::MaybeUninit<f32>]| {
        dr.par_chunks_mut(BLOCK)
            .zip(r.par_chunks(BLOCK).zip(dy.par_chunks(BLOCK)))
            .zip(partials.par_iter_mut())
            .for_each(|((db, (rb, gb)), part)| {
                let mut acc = [0.0f32; super::lanes::LANES];
                for (i, ((o, &rv), &g)) in db.iter_mut().zip(rb).zip(gb).enumerate() {
                    o.write(s * g);
                    acc[i % super::lanes::LANES] += g * rv;
                }
                *part = super::lanes::fold(acc);
            })
    };
    // SAFETY: the blocks of `dr` pair with those of `r` (same length), each element written.
    let dr = unsafe { written_by(r.len(), fill) };
    (dr, partials.iter().sum())
}

/// The scalar of a `[1]` host buffer.
fn scalar(s: &[f32]) -> f32 {
    assert_eq!(s.len(), 1, "scaled add: the scale is one value");
    s[0]
}

impl_for_cpu_backends!(ScaledAddOps {
    fn scaled_add_fused(
        a: FloatTensor<Self>,
        r: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (shape, device) = (a.shape().to_vec(), a.device());
        let y = forward_host(
            &host_view::<Self>(&a),
            &host_view::<Self>(&r),
            scalar(&host_view::<Self>(&s)),
        );
        from_host::<Self>(y, shape, &device)
    }
});

/// Backward step (parents: `a`, `r`, `s`); the state is `r` and `s`.
#[derive(Debug)]
struct ScaledAddBackward;

impl<B: Backend> Backward<B, 3> for ScaledAddBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let (r, s) = ops.state;
        let (shape, device) = (r.shape().to_vec(), r.device());
        let [pa, pr, ps] = ops.parents.map(|p| p.map(|n| n.id));
        let (dr, ds) = backward_host(
            &host_view::<B>(&r),
            scalar(&host_view::<B>(&s)),
            &host_view::<B>(&dy),
        );
        register_host_grads::<B>(grads, &device, [(pr, dr, shape), (ps, vec![ds], vec![1])]);
        if let Some(id) = pa {
            grads.register::<B>(id, dy);
        }
    }
}

impl<B: Backend + ScaledAddOps, C: CheckpointStrategy> ScaledAddOps for Autodiff<B, C> {
    fn scaled_add_fused(
        a: FloatTensor<Self>,
        r: FloatTensor<Self>,
        s: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [a.node(), r.node(), s.node()];
        let (pa, pr, ps) = (a.into_primitive(), r.into_primitive(), s.into_primitive());
        let y = B::scaled_add_fused(pa, pr.clone(), ps.clone());
        match ScaledAddBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((pr, ps), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
