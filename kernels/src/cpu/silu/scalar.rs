//! Portable SiLU: the reference.

pub fn silu_in_place(x: &mut [f32]) {
    for v in x {
        *v = crate::ops::silu(*v);
    }
}

pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = crate::ops::silu(*g) * u;
    }
}
