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
    // The iterate is kept transposed (r x m) so that Gram-Schmidt walks contiguous rows.
    let mut vt = Array2::from_shape_fn((r, m), |(j, i)| {
        let h = (i.wrapping_mul(2_654_435_761) ^ j.wrapping_mul(40_503)) as u32;
        (h % 1000) as f64 / 1000.0 - 0.5
    });
    orthonormalize_rows(&mut vt);
    for _ in 0..ITERATIONS {
        vt = vt.dot(c); // (C V)ᵀ = Vᵀ C for symmetric C
        orthonormalize_rows(&mut vt);
    }
    // Order by Rayleigh quotient.
    let cv = vt.dot(c);
    let mut order: Vec<(usize, f64)> = (0..r).map(|j| (j, vt.row(j).dot(&cv.row(j)))).collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    Array2::from_shape_fn((m, r), |(i, k)| vt[[order[k].0, i]])
}

/// Modified Gram-Schmidt on the rows; a row that collapses is replaced by a unit vector
/// orthogonal to the others where possible.
fn orthonormalize_rows(v: &mut Array2<f64>) {
    let (r, m) = v.dim();
    let Some(data) = v.as_slice_mut() else {
        return;
    };
    for j in 0..r {
        let (done, rest) = data.split_at_mut(j * m);
        let row = &mut rest[..m];
        for k in 0..j {
            let other = &done[k * m..(k + 1) * m];
            let proj: f64 = row.iter().zip(other).map(|(a, b)| a * b).sum();
            for (a, b) in row.iter_mut().zip(other) {
                *a -= proj * b;
            }
        }
        let norm = row.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-300 {
            row.iter_mut().for_each(|a| *a /= norm);
        } else {
            row.fill(0.0);
            row[j % m] = 1.0;
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
