//! The fused selective scan as a burn backend extension with a hand-written backward pass.
//!
//! [`SelectiveScanOps`] is implemented for the CPU backends (Flex; NdArray with the `ndarray`
//! feature) by moving the inputs to host `f32` buffers and running [`super::cpu`], and for
//! `Autodiff<B, C>` by recording one graph node whose backward step runs [`super::cpu::backward`].

// burn 0.22 deprecates NdArray; the project still offers it behind the `ndarray` feature.
#![allow(deprecated)]

use super::cpu::{self, ScanDims};
use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::{Backend, TensorMetadata, backend_extension, tensor::FloatTensor};
use burn::tensor::{TensorData, read_sync};

/// Backends that can run the fused selective scan.
#[backend_extension(Flex, NdArray: cfg(feature = "ndarray"), Autodiff)]
pub trait SelectiveScanOps: Backend {
    /// Fused forward scan; shapes as in [`super::selective_scan`] (already validated).
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl SelectiveScanOps for burn::backend::Flex {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(u, delta, a, b, c, d)
    }
}

#[cfg(feature = "ndarray")]
impl SelectiveScanOps for burn::backend::NdArray {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        host_forward::<Self>(u, delta, a, b, c, d)
    }
}

/// Reads a float tensor into a contiguous row-major `f32` vector.
fn to_host<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    let data = read_sync(B::float_into_data(t))
        .expect("selective scan: reading a tensor back to the host failed");
    data.try_into_vec_as::<f32>()
        .expect("selective scan: tensor data is not convertible to f32")
}

/// Dimensions of a (validated) scan call from the primitive shapes.
fn dims_of<B: Backend>(u: &FloatTensor<B>, a: &FloatTensor<B>) -> ScanDims {
    let (su, sa) = (u.shape(), a.shape());
    ScanDims {
        batch: su[0],
        d_inner: su[1],
        d_state: sa[1],
        len: su[2],
    }
}

/// Forward scan on any backend through host buffers.
fn host_forward<B: Backend>(
    u: FloatTensor<B>,
    delta: FloatTensor<B>,
    a: FloatTensor<B>,
    b: FloatTensor<B>,
    c: FloatTensor<B>,
    d: FloatTensor<B>,
) -> FloatTensor<B> {
    let dims = dims_of::<B>(&u, &a);
    let device = u.device();
    let (u, delta, a, b, c, d) = (
        to_host::<B>(u),
        to_host::<B>(delta),
        to_host::<B>(a),
        to_host::<B>(b),
        to_host::<B>(c),
        to_host::<B>(d),
    );
    let mut y = vec![0.0f32; dims.batch * dims.d_inner * dims.len];
    cpu::forward(dims, &u, &delta, &a, &b, &c, &d, &mut y);
    B::float_from_data(
        TensorData::new(y, [dims.batch, dims.d_inner, dims.len]),
        &device,
    )
}

/// Saved forward inputs (reference-counted primitives, no copies) for the backward step.
type ScanState<B> = [FloatTensor<B>; 6];

/// Backward step of the fused scan (six parents: u, delta, A, B, C, D).
#[derive(Debug)]
struct SelectiveScanBackward;

impl<B: Backend> Backward<B, 6> for SelectiveScanBackward {
    type State = ScanState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 6>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<B>(&ops.node);
        let [u, delta, a, b, c, d] = ops.state;
        let dims = dims_of::<B>(&u, &a);
        let device = u.device();
        let g = cpu::backward(
            dims,
            &to_host::<B>(u),
            &to_host::<B>(delta),
            &to_host::<B>(a),
            &to_host::<B>(b),
            &to_host::<B>(c),
            &to_host::<B>(d),
            &to_host::<B>(dy),
        );
        let ScanDims {
            batch,
            d_inner,
            d_state,
            len,
        } = dims;
        let outs: [(Vec<f32>, Vec<usize>); 6] = [
            (g.du, vec![batch, d_inner, len]),
            (g.ddelta, vec![batch, d_inner, len]),
            (g.da, vec![d_inner, d_state]),
            (g.db, vec![batch, d_state, len]),
            (g.dc, vec![batch, d_state, len]),
            (g.dd, vec![d_inner]),
        ];
        for (parent, (grad, shape)) in ops.parents.into_iter().zip(outs) {
            if let Some(node) = parent {
                grads.register::<B>(
                    node.id,
                    B::float_from_data(TensorData::new(grad, shape), &device),
                );
            }
        }
    }
}

impl<B: Backend + SelectiveScanOps, C: CheckpointStrategy> SelectiveScanOps for Autodiff<B, C> {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let nodes = [
            u.node(),
            delta.node(),
            a.node(),
            b.node(),
            c.node(),
            d.node(),
        ];
        let prims = [
            u.into_primitive(),
            delta.into_primitive(),
            a.into_primitive(),
            b.into_primitive(),
            c.into_primitive(),
            d.into_primitive(),
        ];
        let [pu, pdelta, pa, pb, pc, pd] = prims.clone();
        let y = B::selective_scan_fused(pu, pdelta, pa, pb, pc, pd);
        match SelectiveScanBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(prims, y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }
}
