//! The minGRU on the CPU engine: its element-wise step and backward, which
//! `scan.rs` runs along every row (no matrix product inside the time loop).
//! Same equations as the libtorch tape beside it (`mod.rs`, whose module doc
//! gives them; that tape runs the recurrence as a log-depth scan, this one
//! sequentially); the tests hold both to the independent reference.
use super::MinGru;
use crate::model::cell::scan::ScanCell;
use crate::model::cpu::Real;

impl ScanCell for MinGru {
    /// z h
    const GATES: usize = 2;

    #[inline(always)]
    fn step<T: Real>(a: &mut [T], hd: usize, h_prev: &[T], h: &mut [T]) {
        let (z, c) = a.split_at_mut(hd);
        for j in 0..hd {
            z[j] = z[j].sigmoid();
            h[j] = z[j].fma(c[j], (T::ONE - z[j]) * h_prev[j]);
        }
    }

    #[inline(always)]
    fn step_back<T: Real>(a: &[T], hd: usize, h_prev: &[T], delta: &[T], da: &mut [T], carry: Option<&mut [T]>) {
        let (z, c) = (&a[..hd], &a[hd..]);
        for j in 0..hd {
            da[j] = delta[j] * (c[j] - h_prev[j]) * ((T::ONE - z[j]) * z[j]);
            da[hd + j] = delta[j] * z[j];
        }
        if let Some(below) = carry {
            for j in 0..hd {
                below[j] = delta[j].fma(T::ONE - z[j], below[j]);
            }
        }
    }
}
