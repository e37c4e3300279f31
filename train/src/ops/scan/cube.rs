//! The selective scan (S6 recurrence, [`crate::ops::scan`]) as CubeCL kernels for burn's Cube
//! backend, forward and backward.
//!
//! `h_t = exp(delta_t A) ⊙ h_{t-1} + delta_t B_t u_t`, `y_t = <h_t, C_t> + D u_t`, `h_0 = 0`;
//! layouts as in [`asc_kernels::scan`]: `u`, `delta`, `y`: `[batch, d_inner, L]`; `A`:
//! `[d_inner, d_state]`; `B`, `C`: `[batch, d_state, L]`; `D`: `[d_inner]`.
//!
//! Work split: one unit per (sequence, channel) holds that channel's `d_state` hidden states in
//! registers and runs the time recurrence; a cube is one sequence and a block of `cb` channels,
//! which share `B_t`, `C_t`: the cube stages them into shared memory, `t_chunk` time steps at a
//! time. `d_state` and the chunk length are compile-time constants (one kernel per `d_state`),
//! so the state loops unroll into registers.
//!
//! Backward (the gradient formulas of [`asc_kernels::scan`]), per unit: a forward sweep that
//! keeps the state at the start of every chunk (`h_ckpt`, `L / t_chunk` states per channel),
//! then the chunks in reverse: recompute the chunk's states from its checkpoint into a local
//! array, and run the reverse-time recurrence `dh_t = dy_t C_t + exp(delta_{t+1} A) dh_{t+1}`.
//! `du`, `ddelta` belong to one unit. The sums over channels (`dB`, `dC`) are reduced in shared
//! memory across the cube's units, giving one partial per channel block; the sums over the
//! batch (`dA`, `dD`) are kept per sequence. burn's `sum_dim` adds the partials up: no float
//! atomics anywhere (WGSL has none).

use std::any::{Any, TypeId};

use burn::backend::Backend;
use burn::backend::cubecl::dtype_to_storage_type;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::ops::scan::SelectiveScanOps;

/// Forward kernel: one unit per (sequence, channel), `CUBE_DIM_X` channels per cube; cubes are
/// numbered `CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X` over `batch * ceil(d_inner / CUBE_DIM_X)`.
#[cube(launch)]
#[allow(clippy::manual_div_ceil)] // kernel code: plain integer ops expand the most directly
fn scan_forward_kernel<F: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
    c: &Tensor<F>,
    d: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] n_state: usize,
    #[comptime] t_chunk: usize,
    #[define(F)] _dtype: ElemType,
) {
    let batch = u.shape(0);
    let d_inner = u.shape(1);
    let len = u.shape(2);
    let cb = CUBE_DIM_X as usize;
    let n_blocks = (d_inner + cb - 1) / cb;
    let cube = (CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X) as usize;
    // The whole cube leaves together: no unit of it reaches a barrier.
    if cube >= batch * n_blocks {
        terminate!();
    }
    let seq = cube / n_blocks;
    let ch = (cube % n_blocks) * cb + UNIT_POS_X as usize;
    let active = ch < d_inner;

    let mut sb = Shared::<[F]>::new_slice(n_state * t_chunk);
    let mut sc = Shared::<[F]>::new_slice(n_state * t_chunk);
    let mut a_reg = Array::<F>::new(n_state);
    let mut h = Array::<F>::new(n_state);
    let mut d_ch = F::new(0.0);
    if active {
        #[unroll]
        for n in 0..n_state {
            a_reg[n] = a[ch * a.stride(0) + n * a.stride(1)];
            h[n] = F::new(0.0);
        }
        d_ch = d[ch * d.stride(0)];
    }

    let n_chunks = (len + t_chunk - 1) / t_chunk;
    for k in 0..n_chunks {
        let t0 = k * t_chunk;
        // Stage B[seq, :, t0..t0 + t_chunk] and C[..] as [n][tt] (consecutive units read
        // consecutive time steps); zeros past the sequence end.
        let mut i = UNIT_POS_X as usize;
        while i < n_state * t_chunk {
            let n = i / t_chunk;
            let t = t0 + i % t_chunk;
            let mut vb = F::new(0.0);
            let mut vc = F::new(0.0);
            if t < len {
                vb = b[seq * b.stride(0) + n * b.stride(1) + t * b.stride(2)];
                vc = c[seq * c.stride(0) + n * c.stride(1) + t * c.stride(2)];
            }
            sb[i] = vb;
            sc[i] = vc;
            i += CUBE_DIM_X as usize;
        }
        sync_cube();
        if active {
            for tt in 0..t_chunk {
                let t = t0 + tt;
                if t < len {
                    let ut = u[seq * u.stride(0) + ch * u.stride(1) + t * u.stride(2)];
                    let dt =
                        delta[seq * delta.stride(0) + ch * delta.stride(1) + t * delta.stride(2)];
                    let dtu = dt * ut;
                    let mut acc = d_ch * ut;
                    #[unroll]
                    for n in 0..n_state {
                        let hn = (dt * a_reg[n]).exp() * h[n] + dtu * sb[n * t_chunk + tt];
                        h[n] = hn;
                        acc += hn * sc[n * t_chunk + tt];
                    }
                    let i_y = seq * y.stride(0) + ch * y.stride(1) + t * y.stride(2);
                    y[i_y] = acc;
                }
            }
        }
        sync_cube();
    }
}

/// Backward kernel (layout of the cubes as in [`scan_forward_kernel`], `CUBE_DIM_X == cb`).
///
/// Outputs: `du`, `ddelta` `[batch, d_inner, L]`; `da_part` `[batch, d_inner, d_state]` and
/// `dd_part` `[batch, d_inner]` (per sequence); `db_part`, `dc_part`
/// `[batch, n_blocks, d_state, L]` (per channel block); `h_ckpt` is scratch
/// `[batch, d_inner, n_chunks, d_state]`.
#[cube(launch)]
#[allow(clippy::too_many_arguments, clippy::manual_div_ceil)]
fn scan_backward_kernel<F: Float>(
    u: &Tensor<F>,
    delta: &Tensor<F>,
    a: &Tensor<F>,
    b: &Tensor<F>,
    c: &Tensor<F>,
    d: &Tensor<F>,
    dy: &Tensor<F>,
    du: &mut Tensor<F>,
    ddelta: &mut Tensor<F>,
    da_part: &mut Tensor<F>,
    dd_part: &mut Tensor<F>,
    db_part: &mut Tensor<F>,
    dc_part: &mut Tensor<F>,
    h_ckpt: &mut Tensor<F>,
    #[comptime] n_state: usize,
    #[comptime] t_chunk: usize,
    #[comptime] cb: usize,
    #[define(F)] _dtype: ElemType,
) {
    let batch = u.shape(0);
    let d_inner = u.shape(1);
    let len = u.shape(2);
    let n_blocks = (d_inner + cb - 1) / cb;
    let cube = (CUBE_POS_X + CUBE_POS_Y * CUBE_COUNT_X) as usize;
    if cube >= batch * n_blocks {
        terminate!();
    }
    let seq = cube / n_blocks;
    let block = cube % n_blocks;
    let unit = UNIT_POS_X as usize;
    let ch = block * cb + unit;
    let active = ch < d_inner;
    let n_chunks = (len + t_chunk - 1) / t_chunk;
    let chunk_size = n_state * t_chunk;

    let mut sb = Shared::<[F]>::new_slice(chunk_size);
    let mut sc = Shared::<[F]>::new_slice(chunk_size);
    // Per-unit contributions to dB and dC of the current chunk, `[unit][n][tt]`.
    let mut red_b = Shared::<[F]>::new_slice(cb * chunk_size);
    let mut red_c = Shared::<[F]>::new_slice(cb * chunk_size);

    let mut a_reg = Array::<F>::new(n_state);
    let mut h = Array::<F>::new(n_state);
    let mut d_ch = F::new(0.0);
    if active {
        #[unroll]
        for n in 0..n_state {
            a_reg[n] = a[ch * a.stride(0) + n * a.stride(1)];
        }
        d_ch = d[ch * d.stride(0)];
    }
    #[unroll]
    for n in 0..n_state {
        h[n] = F::new(0.0);
    }

    // Forward sweep: the state at the start of every chunk. B is read from global memory here
    // (all units of the cube read the same values, which the cache serves).
    let ck_base = (seq * d_inner + ch) * n_chunks * n_state;
    if active {
        for k in 0..n_chunks {
            #[unroll]
            for n in 0..n_state {
                h_ckpt[ck_base + k * n_state + n] = h[n];
            }
            for tt in 0..t_chunk {
                let t = k * t_chunk + tt;
                if t < len {
                    let ut = u[seq * u.stride(0) + ch * u.stride(1) + t * u.stride(2)];
                    let dt =
                        delta[seq * delta.stride(0) + ch * delta.stride(1) + t * delta.stride(2)];
                    let dtu = dt * ut;
                    #[unroll]
                    for n in 0..n_state {
                        h[n] = (dt * a_reg[n]).exp() * h[n]
                            + dtu * b[seq * b.stride(0) + n * b.stride(1) + t * b.stride(2)];
                    }
                }
            }
        }
    }

    // Reverse sweep over the chunks.
    let mut dh = Array::<F>::new(n_state);
    let mut da_acc = Array::<F>::new(n_state);
    #[unroll]
    for n in 0..n_state {
        dh[n] = F::new(0.0);
        da_acc[n] = F::new(0.0);
    }
    let mut dd_acc = F::new(0.0);
    // States of the chunk: hs[0..n_state] the state before it, hs[(tt + 1) n_state + n] = h_t.
    let mut hs = Array::<F>::new((t_chunk + 1) * n_state);
    for kk in 0..n_chunks {
        let k = n_chunks - 1 - kk;
        let t0 = k * t_chunk;
        // Stage B[seq, :, t0..t0 + t_chunk] and C[..] as [n][tt] (consecutive units read
        // consecutive time steps); zeros past the sequence end.
        let mut i = UNIT_POS_X as usize;
        while i < n_state * t_chunk {
            let n = i / t_chunk;
            let t = t0 + i % t_chunk;
            let mut vb = F::new(0.0);
            let mut vc = F::new(0.0);
            if t < len {
                vb = b[seq * b.stride(0) + n * b.stride(1) + t * b.stride(2)];
                vc = c[seq * c.stride(0) + n * c.stride(1) + t * c.stride(2)];
            }
            sb[i] = vb;
            sc[i] = vc;
            i += CUBE_DIM_X as usize;
        }
        sync_cube();

        #[unroll]
        for n in 0..n_state {
            let mut v = F::new(0.0);
            if active {
                v = h_ckpt[ck_base + k * n_state + n];
            }
            hs[n] = v;
        }
        // Past the sequence end (and on inactive units) delta = u = dy = 0: the state carries
        // over unchanged and every contribution is zero.
        for tt in 0..t_chunk {
            let t = t0 + tt;
            let mut ut = F::new(0.0);
            let mut dt = F::new(0.0);
            if active && t < len {
                ut = u[seq * u.stride(0) + ch * u.stride(1) + t * u.stride(2)];
                dt = delta[seq * delta.stride(0) + ch * delta.stride(1) + t * delta.stride(2)];
            }
            let dtu = dt * ut;
            #[unroll]
            for n in 0..n_state {
                hs[(tt + 1) * n_state + n] =
                    (dt * a_reg[n]).exp() * hs[tt * n_state + n] + dtu * sb[n * t_chunk + tt];
            }
        }

        for i in 0..t_chunk {
            let tt = t_chunk - 1 - i;
            let t = t0 + tt;
            let mut ut = F::new(0.0);
            let mut dt = F::new(0.0);
            let mut dyt = F::new(0.0);
            let valid = active && t < len;
            if valid {
                ut = u[seq * u.stride(0) + ch * u.stride(1) + t * u.stride(2)];
                dt = delta[seq * delta.stride(0) + ch * delta.stride(1) + t * delta.stride(2)];
                dyt = dy[seq * dy.stride(0) + ch * dy.stride(1) + t * dy.stride(2)];
            }
            let dtu = dt * ut;
            let mut du_acc = d_ch * dyt;
            let mut ddt = F::new(0.0);
            #[unroll]
            for n in 0..n_state {
                let bn = sb[n * t_chunk + tt];
                let cn = sc[n * t_chunk + tt];
                let hp = hs[tt * n_state + n];
                let hn = hs[(tt + 1) * n_state + n];
                let an = (dt * a_reg[n]).exp();
                // dL/dh_t: this step's output plus the state carried back from t + 1.
                let g = dh[n] + dyt * cn;
                let ga = g * hp * an; // dL/d(delta_t A_n)
                da_acc[n] += ga * dt;
                ddt += ga * a_reg[n] + g * bn * ut;
                du_acc += g * dt * bn;
                red_b[unit * chunk_size + n * t_chunk + tt] = g * dtu;
                red_c[unit * chunk_size + n * t_chunk + tt] = dyt * hn;
                dh[n] = g * an;
            }
            dd_acc += dyt * ut;
            if valid {
                let i_du = seq * du.stride(0) + ch * du.stride(1) + t * du.stride(2);
                du[i_du] = du_acc;
                let i_ddelta =
                    seq * ddelta.stride(0) + ch * ddelta.stride(1) + t * ddelta.stride(2);
                ddelta[i_ddelta] = ddt;
            }
        }
        sync_cube();

        // dB, dC of the chunk summed over the cube's channels: one output per unit and turn.
        let mut j = unit;
        while j < chunk_size {
            let n = j / t_chunk;
            let t = t0 + j % t_chunk;
            let mut sum_b = F::new(0.0);
            let mut sum_c = F::new(0.0);
            for v in 0..cb {
                sum_b += red_b[v * chunk_size + j];
                sum_c += red_c[v * chunk_size + j];
            }
            if t < len {
                let ib = seq * db_part.stride(0)
                    + block * db_part.stride(1)
                    + n * db_part.stride(2)
                    + t * db_part.stride(3);
                db_part[ib] = sum_b;
                let ic = seq * dc_part.stride(0)
                    + block * dc_part.stride(1)
                    + n * dc_part.stride(2)
                    + t * dc_part.stride(3);
                dc_part[ic] = sum_c;
            }
            j += cb;
        }
        sync_cube();
    }

    if active {
        #[unroll]
        for n in 0..n_state {
            let i_da_part =
                seq * da_part.stride(0) + ch * da_part.stride(1) + n * da_part.stride(2);
            da_part[i_da_part] = da_acc[n];
        }
        let i_dd_part = seq * dd_part.stride(0) + ch * dd_part.stride(1);
        dd_part[i_dd_part] = dd_acc;
    }
}

/// Channels per cube and time steps per chunk of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanPlan {
    /// Units (channels) per cube.
    pub cb: usize,
    /// Time steps staged per chunk.
    pub t_chunk: usize,
}

/// Forward plan: up to 128 channels per cube (fewer when `d_inner` or the device is smaller),
/// 32-step chunks of `B`, `C` (`2 * 32 * d_state` floats of shared memory; shorter chunks
/// where that does not fit).
pub fn forward_plan(
    d_inner: usize,
    d_state: usize,
    max_units: usize,
    max_shared: usize,
) -> ScanPlan {
    let cb = d_inner
        .next_power_of_two()
        .clamp(1, 128)
        .min(max_units.max(1));
    let mut t_chunk = 32;
    while t_chunk > 1 && 2 * d_state * t_chunk * 4 > max_shared {
        t_chunk /= 2;
    }
    ScanPlan { cb, t_chunk }
}

/// Backward plan: the largest `cb` (64, 32 or 16 channels, at most the device's units per
/// cube) and then the longest chunk (8, 4, 2 or 1 steps) whose shared memory,
/// `2 d_state t_chunk (cb + 1)` floats, fits in `max_shared` bytes; fewer channels only when
/// nothing else fits. It depends on `d_state` and the device alone: one compiled kernel per
/// `d_state` (channels past `d_inner` idle).
///
/// # Panics
/// When even one channel and one time step do not fit (`d_state` in the thousands).
pub fn backward_plan(d_state: usize, max_units: usize, max_shared: usize) -> ScanPlan {
    let fits = |cb: usize, t: usize| 2 * d_state * t * (cb + 1) * 4 <= max_shared;
    let most = 64.min(max_units.max(1));
    for floor in [16.min(most), 1] {
        for t_chunk in [8, 4, 2, 1] {
            let mut cb = most;
            while cb >= floor {
                if fits(cb, t_chunk) {
                    return ScanPlan { cb, t_chunk };
                }
                cb /= 2;
            }
        }
    }
    panic!(
        "selective scan: d_state {d_state} does not fit the device's {max_shared} B of shared \
         memory"
    )
}

/// A cube grid of `total` cubes: `(x, y)` with `x <= 65535` (wgpu's per-dimension limit).
fn grid(total: usize) -> CubeCount {
    let x = total.clamp(1, 65_535);
    CubeCount::Static(x as u32, total.div_ceil(x).max(1) as u32, 1)
}

/// `[batch, d_inner, len, d_state]` of a scan call from `u` and `a`.
fn scan_dims(u: &CubeTensor, a: &CubeTensor) -> [usize; 4] {
    let [batch, d_inner, len] = u.meta.shape().dims::<3>();
    let [_, d_state] = a.meta.shape().dims::<2>();
    [batch, d_inner, len, d_state]
}

/// An uninitialised tensor of `shape` on `like`'s device.
fn empty_like(like: &CubeTensor, shape: Vec<usize>, dtype: DType) -> CubeTensor {
    empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        dtype,
    )
}

/// Forward scan on a Cube device; inputs already shape-checked ([`crate::ops::scan`]).
pub fn forward(
    u: CubeTensor,
    delta: CubeTensor,
    a: CubeTensor,
    b: CubeTensor,
    c: CubeTensor,
    d: CubeTensor,
) -> CubeTensor {
    let [u, delta, a, b, c, d] = [u, delta, a, b, c, d].map(into_contiguous);
    let [batch, d_inner, len, d_state] = scan_dims(&u, &a);
    let dtype = u.dtype;
    let y = empty_like(&u, vec![batch, d_inner, len], dtype);
    if y.meta.shape().num_elements() == 0 {
        return y;
    }
    let hw = &u.client.properties().hardware;
    let plan = forward_plan(
        d_inner,
        d_state,
        hw.max_units_per_cube as usize,
        hw.max_shared_memory_size,
    );
    let client = u.client.clone();
    scan_forward_kernel::launch(
        &client,
        grid(batch * d_inner.div_ceil(plan.cb)),
        CubeDim::new_1d(plan.cb as u32),
        u.into_tensor_arg(),
        delta.into_tensor_arg(),
        a.into_tensor_arg(),
        b.into_tensor_arg(),
        c.into_tensor_arg(),
        d.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        d_state,
        plan.t_chunk,
        dtype_to_storage_type(dtype),
    );
    y
}

/// Gradients of the scan on a Cube device: `[du, ddelta, dA, dB, dC, dD]` in the input shapes.
pub fn backward(inputs: [CubeTensor; 6], dy: CubeTensor) -> [CubeTensor; 6] {
    let [u, delta, a, b, c, d] = inputs.map(into_contiguous);
    let dy = into_contiguous(dy);
    let [batch, d_inner, len, d_state] = scan_dims(&u, &a);
    let dtype = u.dtype;
    let hw = &u.client.properties().hardware;
    let plan = backward_plan(
        d_state,
        hw.max_units_per_cube as usize,
        hw.max_shared_memory_size,
    );
    let n_blocks = d_inner.div_ceil(plan.cb);
    let n_chunks = len.div_ceil(plan.t_chunk);
    let du = empty_like(&u, vec![batch, d_inner, len], dtype);
    let ddelta = empty_like(&u, vec![batch, d_inner, len], dtype);
    let da_part = empty_like(&u, vec![batch, d_inner, d_state], dtype);
    let dd_part = empty_like(&u, vec![batch, d_inner], dtype);
    let db_part = empty_like(&u, vec![batch, n_blocks, d_state, len], dtype);
    let dc_part = empty_like(&u, vec![batch, n_blocks, d_state, len], dtype);
    let h_ckpt = empty_like(&u, vec![batch, d_inner, n_chunks, d_state], dtype);
    if batch * d_inner * len > 0 {
        let client = u.client.clone();
        scan_backward_kernel::launch(
            &client,
            grid(batch * n_blocks),
            CubeDim::new_1d(plan.cb as u32),
            u.into_tensor_arg(),
            delta.into_tensor_arg(),
            a.into_tensor_arg(),
            b.into_tensor_arg(),
            c.into_tensor_arg(),
            d.into_tensor_arg(),
            dy.into_tensor_arg(),
            du.clone().into_tensor_arg(),
            ddelta.clone().into_tensor_arg(),
            da_part.clone().into_tensor_arg(),
            dd_part.clone().into_tensor_arg(),
            db_part.clone().into_tensor_arg(),
            dc_part.clone().into_tensor_arg(),
            h_ckpt.into_tensor_arg(),
            d_state,
            plan.t_chunk,
            plan.cb,
            dtype_to_storage_type(dtype),
        );
    }
    type Cb = CubeBackend;
    let sum_to = |t: CubeTensor, dim: usize, shape: Vec<usize>| {
        Cb::float_reshape(Cb::float_sum_dim(t, dim), Shape::from(shape))
    };
    [
        du,
        ddelta,
        sum_to(da_part, 0, vec![d_inner, d_state]),
        sum_to(db_part, 1, vec![batch, d_state, len]),
        sum_to(dc_part, 1, vec![batch, d_state, len]),
        sum_to(dd_part, 0, vec![d_inner]),
    ]
}

impl SelectiveScanOps for CubeBackend {
    fn selective_scan_fused(
        u: FloatTensor<Self>,
        delta: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        c: FloatTensor<Self>,
        d: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        forward(u, delta, a, b, c, d)
    }
}

/// The scan's backward step on a Cube backend, for the autodiff node of
/// [`crate::ops::scan::SelectiveScanOps`] (generic over the inner backend `B`): the gradients when
/// `B` is burn's Cube backend, `None` otherwise (the host kernel then runs).
pub(crate) fn cube_backward<B: Backend>(
    state: &[FloatTensor<B>; 6],
    dy: &FloatTensor<B>,
) -> Option<[FloatTensor<B>; 6]> {
    if TypeId::of::<B>() != TypeId::of::<CubeBackend>() {
        return None;
    }
    let cube = |t: &FloatTensor<B>| {
        (t as &dyn Any)
            .downcast_ref::<CubeTensor>()
            .cloned()
            .expect("Cube backend tensors are CubeTensors")
    };
    let grads = backward(state.each_ref().map(cube), cube(dy));
    Some(grads.map(|g| {
        *(Box::new(g) as Box<dyn Any>)
            .downcast::<FloatTensor<B>>()
            .expect("B is the Cube backend")
    }))
}
