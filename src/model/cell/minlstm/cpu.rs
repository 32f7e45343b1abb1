//! The minLSTM on the CPU engine: its element-wise step and backward, which
//! `scan.rs` runs along every row, as the minGRU's (`mingru/cpu.rs`). Same
//! equations as the libtorch tape beside it (`mod.rs`, whose module doc gives
//! them); the tests hold both to the independent reference.
use super::MinLstm;
use crate::model::cell::scan::ScanCell;
use crate::model::cpu::Real;

impl ScanCell for MinLstm {
    /// f i h
    const GATES: usize = 3;

    #[inline(always)]
    fn step<T: Real>(a: &mut [T], hd: usize, h_prev: &[T], h: &mut [T]) {
        let (f, rest) = a.split_at_mut(hd);
        let (i, c) = rest.split_at_mut(hd);
        for j in 0..hd {
            f[j] = f[j].sigmoid();
            i[j] = i[j].sigmoid();
            let sum = f[j] + i[j];
            h[j] = (f[j] / sum) * h_prev[j] + (i[j] / sum) * c[j];
        }
    }

    #[inline(always)]
    fn step_back<T: Real>(a: &[T], hd: usize, h_prev: &[T], delta: &[T], da: &mut [T], carry: Option<&mut [T]>) {
        let (f, i, c) = (&a[..hd], &a[hd..2 * hd], &a[2 * hd..]);
        for j in 0..hd {
            let sum = f[j] + i[j];
            let (fp, ip) = (f[j] / sum, i[j] / sum);
            let q = fp * ip * (delta[j] * (h_prev[j] - c[j]));
            da[j] = q * (T::ONE - f[j]);
            da[hd + j] = -q * (T::ONE - i[j]);
            da[2 * hd + j] = delta[j] * ip;
        }
        if let Some(below) = carry {
            for j in 0..hd {
                below[j] = delta[j].fma(f[j] / (f[j] + i[j]), below[j]);
            }
        }
    }
}
