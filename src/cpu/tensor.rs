//! Raw strided views of NCHW channel slices, shared between ops that read one slice of a buffer
//! while writing another slice of the same buffer (Res2Net's chained splits, concatenations).

/// Shape of a channel slice: image `i`, channel `ch` starts at `i * batch_stride + ch * h * w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    /// Floats between consecutive images (c_total · h · w of the underlying buffer).
    pub batch_stride: usize,
}

impl Shape {
    /// A dense N×C×H×W tensor.
    pub fn dense(n: usize, c: usize, h: usize, w: usize) -> Shape {
        Shape { n, c, h, w, batch_stride: c * h * w }
    }
    pub fn hw(&self) -> usize {
        self.h * self.w
    }
    /// Offset of plane (image i, channel ch).
    pub fn plane(&self, i: usize, ch: usize) -> usize {
        i * self.batch_stride + ch * self.h * self.w
    }
    /// Smallest buffer length that holds this view.
    pub fn span(&self) -> usize {
        if self.n == 0 {
            0
        } else {
            (self.n - 1) * self.batch_stride + self.c * self.hw()
        }
    }
}

/// Read-only view. Callers guarantee that `ptr` is valid for `shape.span()` floats for the view's lifetime.
#[derive(Clone, Copy, Debug)]
pub struct In {
    pub ptr: *const f32,
    pub shape: Shape,
}

/// Writable view. Callers guarantee validity and that no other view written concurrently overlaps it.
#[derive(Clone, Copy, Debug)]
pub struct Out {
    pub ptr: *mut f32,
    pub shape: Shape,
}

// SAFETY: views are plain pointers; the executor schedules ops so that concurrent writes never overlap.
unsafe impl Send for In {}
unsafe impl Sync for In {}
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl In {
    pub fn new(data: &[f32], shape: Shape) -> In {
        assert!(data.len() >= shape.span(), "view exceeds buffer");
        In { ptr: data.as_ptr(), shape }
    }
    /// One H×W plane.
    ///
    /// # Safety
    /// The view must point at live memory (see the type's contract).
    pub unsafe fn plane<'a>(self, i: usize, ch: usize) -> &'a [f32] {
        std::slice::from_raw_parts(self.ptr.add(self.shape.plane(i, ch)), self.shape.hw())
    }
    /// Channels ch.. of image i as one contiguous run of `c · h · w` floats.
    ///
    /// # Safety
    /// As `plane`.
    pub unsafe fn image<'a>(self, i: usize) -> &'a [f32] {
        std::slice::from_raw_parts(self.ptr.add(self.shape.plane(i, 0)), self.shape.c * self.shape.hw())
    }
}

impl Out {
    pub fn new(data: &mut [f32], shape: Shape) -> Out {
        assert!(data.len() >= shape.span(), "view exceeds buffer");
        Out { ptr: data.as_mut_ptr(), shape }
    }
    pub fn as_in(&self) -> In {
        In { ptr: self.ptr, shape: self.shape }
    }
    /// # Safety
    /// As `In::plane`, and no other live reference may overlap this plane.
    pub unsafe fn plane<'a>(self, i: usize, ch: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(self.shape.plane(i, ch)), self.shape.hw())
    }
    /// # Safety
    /// As `plane`.
    pub unsafe fn image<'a>(self, i: usize) -> &'a mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.add(self.shape.plane(i, 0)), self.shape.c * self.shape.hw())
    }
}

/// A raw output pointer handed to rayon tasks that write disjoint regions of one buffer.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: tasks sharing it write disjoint ranges (each caller's invariant).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
