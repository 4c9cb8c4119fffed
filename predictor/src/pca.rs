//! Leading eigenvectors of a symmetric positive semi-definite matrix by subspace (block
//! power) iteration: enough for the handful of principal directions a predictor keeps.

use ndarray::Array2;

/// Iterations of the block power method; the leading 64 directions of a layer's gate
/// covariance settle well before this.
const ITERATIONS: usize = 40;

/// The `r` leading eigenvectors of `c` (m x m, symmetric), as the columns of an m x r
/// matrix, orthonormal, in decreasing eigenvalue order.
pub fn leading_eigenvectors(c: &Array2<f64>, r: usize) -> Array2<f64> {
    let m = c.nrows();
    let r = r.min(m);
    // A fixed, well-spread start (no RNG dependency): columns of a Hadamard-like pattern.
    let mut v = Array2::from_shape_fn((m, r), |(i, j)| {
        let h = (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) as u32;
        (h % 1000) as f64 / 1000.0 - 0.5
    });
    orthonormalize(&mut v);
    for _ in 0..ITERATIONS {
        v = c.dot(&v);
        orthonormalize(&mut v);
    }
    // Order by Rayleigh quotient.
    let cv = c.dot(&v);
    let mut order: Vec<(usize, f64)> = (0..r).map(|j| (j, v.column(j).dot(&cv.column(j)))).collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    Array2::from_shape_fn((m, r), |(i, k)| v[[i, order[k].0]])
}

/// Modified Gram-Schmidt on the columns; a column that collapses is replaced by a unit
/// vector orthogonal to the others where possible.
fn orthonormalize(v: &mut Array2<f64>) {
    let r = v.ncols();
    for j in 0..r {
        for k in 0..j {
            let proj = v.column(j).dot(&v.column(k));
            let ck = v.column(k).to_owned();
            v.column_mut(j).scaled_add(-proj, &ck);
        }
        let norm = v.column(j).dot(&v.column(j)).sqrt();
        if norm > 1e-300 {
            v.column_mut(j).mapv_inplace(|x| x / norm);
        } else {
            v.column_mut(j).fill(0.0);
            let i = j % v.nrows();
            v[[i, j]] = 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_leading_directions_of_a_diagonal_matrix() {
        let c = Array2::from_diag(&ndarray::arr1(&[1.0, 5.0, 3.0, 0.5]));
        let v = leading_eigenvectors(&c, 2);
        assert!((v[[1, 0]].abs() - 1.0).abs() < 1e-9, "{v:?}");
        assert!((v[[2, 1]].abs() - 1.0).abs() < 1e-9, "{v:?}");
    }
}
