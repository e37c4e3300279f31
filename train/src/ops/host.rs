//! The bridge between burn's backend tensors and the kernels' host buffers, shared by every
//! op's backend extension: borrowed `f32` views of the inputs, outputs moved into tensors,
//! gradients registered for the autodiff graph.

use std::borrow::Cow;

use burn::backend::{Backend, tensor::FloatTensor};
use burn::tensor::{TensorData, read_sync};

/// Implements a backend-extension trait for the CPU backends that run host kernels: Flex, and
/// NdArray with the `ndarray` feature. The body (the trait's methods, written against `Self`)
/// is the same for both.
macro_rules! impl_for_cpu_backends {
    ($trait:path { $($body:tt)* }) => {
        impl $trait for burn::backend::Flex {
            $($body)*
        }

        // burn 0.22 deprecates NdArray; the project still offers it behind the `ndarray` feature.
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        impl $trait for burn::backend::NdArray {
            $($body)*
        }
    };
}
pub(crate) use impl_for_cpu_backends;

/// Contiguous row-major `f32` view of a backend tensor for the host kernels: Flex's storage is
/// borrowed in place when it is contiguous `f32` (no copy); anything else is read back.
pub(crate) fn host_view<B: Backend>(t: &FloatTensor<B>) -> Cow<'_, [f32]> {
    let any: &dyn std::any::Any = t;
    if let Some(s) = any
        .downcast_ref::<FloatTensor<burn::backend::Flex>>()
        .and_then(|f| f.as_slice::<f32>())
    {
        return Cow::Borrowed(s);
    }
    let data = read_sync(B::float_into_data(t.clone()))
        .expect("fused op: reading a tensor back to the host failed");
    Cow::Owned(
        data.try_into_vec_as::<f32>()
            .expect("fused op: tensor data is not convertible to f32"),
    )
}

/// Wraps a host buffer (moved, not copied, on Flex) as a float tensor of `shape`.
pub(crate) fn from_host<B: Backend>(
    v: Vec<f32>,
    shape: Vec<usize>,
    device: &B::Device,
) -> FloatTensor<B> {
    B::float_from_data(TensorData::new(v, shape), device)
}

/// The last step of a fused op's backward: registers each tracked parent's host gradient
/// (`None`: the parent is not tracked) as a tensor of its shape on `device`.
pub(crate) fn register_host_grads<B: Backend>(
    grads: &mut burn::backend::autodiff::grads::Gradients,
    device: &B::Device,
    outs: impl IntoIterator<
        Item = (
            Option<burn::backend::autodiff::NodeId>,
            Vec<f32>,
            Vec<usize>,
        ),
    >,
) {
    for (id, grad, shape) in outs {
        if let Some(id) = id {
            grads.register::<B>(id, from_host::<B>(grad, shape, device));
        }
    }
}
