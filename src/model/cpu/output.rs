//! The output layer's part of a training step on the CPU engine: logits,
//! d2l's loss (mean cross-entropy per token) and its gradients, fused per row:
//!
//! ```text
//! Y = H W_hq + b_q      loss = mean_rows (logsumexp(Y) − Y[y])
//! dY = (softmax(Y) − onehot(y)) / N      dH = dY W_hqᵀ

//! dW_hq = Hᵀ dY        db_q = Σ_rows dY
//! ```
//!
//! libtorch does this in about a dozen calls (the products with a width of V
//! run far below MKL's rate); here each thread takes its rows through both
//! products and the softmax, and computes its share of `dW_hq` (a product
//! over its rows, [`gemm_tn_acc`]) and `db_q`, in one parallel region.
//! The threads' shares are added in the order of their rows, so the sums do
//! not depend on which thread finishes first.
use super::gemm::{gemm_acc, gemm_tn_acc, Packed};
use super::{par_rows, Real, RowJob, View};
use std::sync::Mutex;
use tch::{Kind, Tensor};

/// For the top layer's outputs `top [N, H]`, targets `y [N]` (Int64):
/// `(loss, dH [N, H], dW_hq [H, V], db_q [V])`; `bf16`: the products take bf16 inputs.
pub fn step(top: &Tensor, w_hq: &Tensor, b_q: &Tensor, y: &Tensor, bf16: bool) -> (Tensor, Tensor, Tensor, Tensor) {
    match top.kind() {
        Kind::Float if bf16 => step_as::<super::bf16::MixedF32>(top, w_hq, b_q, y),
        Kind::Float => step_as::<f32>(top, w_hq, b_q, y),
        _ => step_as::<f64>(top, w_hq, b_q, y),
    }
}

fn step_as<T: Real>(top: &Tensor, w_hq: &Tensor, b_q: &Tensor, y: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let top = top.contiguous();
    let y = y.contiguous();
    let (n, h, v) = (top.size()[0] as usize, top.size()[1] as usize, w_hq.size()[1] as usize);
    let opts = (top.kind(), top.device());
    let (d_y, d_top, losses) =
        (Tensor::empty([n as i64, v as i64], opts), Tensor::empty([n as i64, h as i64], opts), Tensor::empty([n as i64, 1], opts));
    let (wq, wq_t) = (Packed::<T>::of(&[w_hq], false), Packed::<T>::of(&[w_hq], true));
    let b_q: Vec<T> = super::values(b_q);
    let job = Output {
        n,
        v,
        h,
        wq: &wq,
        wq_t: &wq_t,
        b_q: &b_q,
        y: y.data_ptr() as *const i64,
        top: View::of(&top),
        d_y: View::of(&d_y),
        d_top: View::of(&d_top),
        losses: View::of(&losses),
        shares: Mutex::new(vec![]),
    };
    par_rows(n, &job);
    // [dW_hq ; db_q] per thread, [H + 1, V], added in the order of the rows.
    let mut shares = job.shares.into_inner().expect("no thread panicked");
    shares.sort_by_key(|s| s.0);
    let sum = Tensor::zeros([h as i64 + 1, v as i64], opts);
    // SAFETY: a fresh contiguous [H + 1, V] tensor of kind T.
    let acc = unsafe { std::slice::from_raw_parts_mut(sum.data_ptr() as *mut T, (h + 1) * v) };
    for (_, share) in &shares {
        for (a, b) in acc.iter_mut().zip(share) {
            *a = *a + *b;
        }
    }
    let (g_w, g_b) = (sum.narrow(0, 0, h as i64), sum.select(0, h as i64));
    (losses.sum(top.kind()) / n as f64, d_top, g_w, g_b)
}

struct Output<'a, T> {
    n: usize,
    v: usize,
    h: usize,
    wq: &'a Packed<T>,
    wq_t: &'a Packed<T>,
    b_q: &'a [T],
    y: *const i64,
    top: View<T>,
    d_y: View<T>,
    d_top: View<T>,
    losses: View<T>,
    /// Each thread's first row and its `[dW_hq ; db_q]` share, `[H + 1, V]`.
    shares: Mutex<Vec<(usize, Vec<T>)>>,
}

// SAFETY: y is read only; the views are written in each thread's own rows.
unsafe impl<T: Sync> Sync for Output<'_, T> {}

impl<T: Real> RowJob for Output<'_, T> {
    #[inline(always)]
    fn run(&self, rows: std::ops::Range<usize>) {
        let Output { n, v, h, wq, wq_t, b_q, y, top, d_y, d_top, losses, .. } = *self;
        let (r0, m) = (rows.start, rows.len());
        let inv_n = T::ONE / T::from_usize(n);
        // SAFETY: rows within [0, n) of every buffer; this thread's rows only.
        unsafe {
            for r in rows.clone() {
                d_y.seg(0, r, 0, v).copy_from_slice(b_q);
            }
            gemm_acc(m, top.row(0, r0), h, wq, d_y.row(0, r0), v); // Y = H W_hq + b_q
            let mut share = vec![T::ZERO; (h + 1) * v];
            let (dw, db) = share.split_at_mut(h * v);
            for r in rows.clone() {
                let row = d_y.seg(0, r, 0, v);
                let max = row.iter().fold(row[0], |a, &x| if x > a { x } else { a });
                let target = *y.add(r) as usize;
                let shifted = row[target] - max;
                let mut sum = T::ZERO;
                for x in row.iter_mut() {
                    *x = (*x - max).exp();
                    sum = sum + *x;
                }
                // logsumexp(Y) − Y[y] = log Σ e^{Y − max} − (Y[y] − max).
                losses.seg(0, r, 0, 1)[0] = sum.ln() - shifted;
                let scale = inv_n / sum;
                for x in row.iter_mut() {
                    *x = *x * scale;
                }
                row[target] = row[target] - inv_n;
                for (a, &g) in db.iter_mut().zip(row.iter()) {
                    *a = *a + g; // db_q += dY[r]
                }
            }
            // dW_hq += H[rows]ᵀ dY[rows]: a product over this thread's rows.
            let d_y_rows = Packed::from_rows(d_y.row(0, r0), m, v, v);
            gemm_tn_acc(h, top.row(0, r0), h, &d_y_rows, dw.as_mut_ptr(), v);
            for r in rows {
                d_top.seg(0, r, 0, h).fill(T::ZERO);
            }
            self.shares.lock().expect("no thread panicked").push((r0, share));
            gemm_acc(m, d_y.row(0, r0), v, wq_t, d_top.row(0, r0), h); // dH = dY W_hqᵀ
        }
    }
}
