//! Exchanging the two middle axes of a `[B, X, Y, Z]` tensor into a contiguous `[B, Y, X, Z]`
//! one, as one op with its backward pass (burn backend extension): the layout changes around
//! the parallel Mamba blocks (feature map `[B, C, H*W]` to tokens `[B, H*W, C]` and back, the
//! tokens' channel groups `[B, L, P, d]` to sequences `[B, P, L, d]` and back).
//!
//! burn expresses them as `swap_dims` + `reshape`, which copies the strided view on the calling
//! thread when the next op needs contiguous memory, and copies the gradient again in the
//! backward pass; here both directions run on the rayon pool: over the batch with register
//! tiles for `Z = 1` (`int8::kernels::transpose_strided_fast`), over the output blocks
//! `[b, y]` with row copies of `Z` values otherwise. The backward pass of the swap is the swap
//! of the gradient the other way.

use std::mem::MaybeUninit;

use super::{from_host, host_view, register_host_grads, written_by};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use rayon::prelude::*;

use crate::int8::kernels::transpose_strided_fast;

/// Backends that can run the fused axis swap.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait SwapMidOps: Backend {
    /// `[B, X, Y, Z] -> [B, Y, X, Z]`, contiguous.
    fn swap_mid_fused(x: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `dst[b, y, x, :] = src[b, x, y, :]` for `src` `[B, X, Y, Z]` (`shape`), on the rayon pool
/// (over `B` for `Z = 1`, over the output blocks `[b, y]` otherwise, written without a
/// zero-fill).
pub fn swap_mid_host(src: &[f32], [b, xn, yn, z]: [usize; 4]) -> Vec<f32> {
    let block = xn * yn * z;
    assert_eq!(src.len(), b * block, "swap_mid: input size");
    if z == 1 {
        let mut dst = super::zeros_par(src.len());
        if block > 0 {
            dst.par_chunks_mut(block)
                .zip(src.par_chunks(block))
                .for_each(|(d, s)| transpose_strided_fast(s, yn, d, xn, xn, yn));
        }
        return dst;
    }
    // Rows of `Z` values: one task per output block `[b, y]` (`[X, Z]`, contiguous), which
    // gathers its rows from `src[b, :, y]`; parallel even for `B = 1`.
    let out_block = xn * z;
    let fill = |dst: &mut [MaybeUninit<f32>]| {
        if out_block == 0 {
            return;
        }
        dst.par_chunks_mut(out_block)
            .enumerate()
            .for_each(|(by, d)| {
                let (b, y) = (by / yn, by % yn);
                let s = &src[b * block..(b + 1) * block];
                for (x, o) in d.chunks_exact_mut(z).enumerate() {
                    let row = &s[(x * yn + y) * z..(x * yn + y + 1) * z];
                    for (o, &v) in o.iter_mut().zip(row) {
                        o.write(v);
                    }
                }
            });
    };
    // SAFETY: the `B * Y` output blocks of `X * Z` values cover the buffer, each value written.
    unsafe { written_by(src.len(), fill) }
}

/// The shape as `[B, X, Y, Z]`.
fn dims4(shape: &[usize]) -> [usize; 4] {
    shape
        .try_into()
        .unwrap_or_else(|_| panic!("swap_mid: a 4-D tensor, got {shape:?}"))
}

impl_for_cpu_backends!(SwapMidOps {
    fn swap_mid_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let (shape, device) = (x.shape().to_vec(), x.device());
        let [b, xn, yn, z] = dims4(&shape);
        let y = swap_mid_host(&host_view::<Self>(&x), [b, xn, yn, z]);
        from_host::<Self>(y, vec![b, yn, xn, z], &device)
    }
});

/// Backward step (parent: the input); the state is the input's shape.
#[derive(Debug)]
struct SwapMidBackward;

impl<B: Backend> Backward<B, 1> for SwapMidBackward {
    type State = [usize; 4];

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let [b, xn, yn, z] = ops.state;
        let device = dy.device();
        // dy is [B, Y, X, Z]; its swap is dx [B, X, Y, Z].
        let dx = swap_mid_host(&host_view::<B>(&dy), [b, yn, xn, z]);
        let [px] = ops.parents.map(|p| p.map(|n| n.id));
        register_host_grads::<B>(grads, &device, [(px, dx, vec![b, xn, yn, z])]);
    }
}

impl<B: Backend + SwapMidOps, C: CheckpointStrategy> SwapMidOps for Autodiff<B, C> {
    fn swap_mid_fused(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let shape = dims4(&x.shape().to_vec());
        let nodes = [x.node()];
        let y = B::swap_mid_fused(x.into_primitive());
        match SwapMidBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(shape, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
