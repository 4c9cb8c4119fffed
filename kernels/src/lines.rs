//! A zero-initialized byte buffer aligned to cache lines, for weight layouts whose rows or
//! tiles must start on a line.

/// One cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zero-initialized, 64-byte aligned byte buffer of a fixed length.
#[derive(Clone)]
pub(crate) struct Lines {
    lines: Vec<Line>,
    len: usize,
}

impl Lines {
    /// `len` zero bytes, starting on a cache line.
    pub(crate) fn zeroed(len: usize) -> Self {
        Self { lines: vec![Line([0; 64]); len.div_ceil(64)], len }
    }
    /// The buffer's bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is 64 plain bytes (repr(C), no padding), the vector holds at least
        // `len` of them, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }
    /// The buffer's bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, borrowed mutably through `self`; any byte value is valid.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }
    /// The buffer as f32 values (`len / 4` of them), starting on a cache line.
    pub(crate) fn floats(&self) -> &[f32] {
        // SAFETY: the lines hold at least `len` bytes, 64-byte aligned (so 4-byte aligned for
        // f32), every bit pattern is a valid f32, and the slice borrows `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, self.len / 4) }
    }
    /// The buffer as f32 values, writable.
    pub(crate) fn floats_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `floats`, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, self.len / 4) }
    }
}

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lines({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer starts on a line, has the asked length, starts zeroed and keeps writes.
    #[test]
    fn aligned_zeroed_and_writable() {
        let mut l = Lines::zeroed(100);
        assert_eq!(l.bytes().len(), 100);
        assert_eq!(l.bytes().as_ptr() as usize % 64, 0);
        assert!(l.bytes().iter().all(|&b| b == 0));
        l.bytes_mut()[99] = 7;
        assert_eq!(l.bytes()[99], 7);
    }

    /// The f32 view covers the whole floats of the buffer, on a line, and shares its bytes.
    #[test]
    fn float_view_shares_the_bytes() {
        let mut l = Lines::zeroed(70);
        assert_eq!(l.floats().len(), 17);
        assert_eq!(l.floats().as_ptr() as usize % 64, 0);
        l.floats_mut()[16] = 1.5;
        assert_eq!(l.bytes()[64..68], 1.5f32.to_le_bytes());
    }
}
