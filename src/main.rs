fn main() -> anyhow::Result<()> {
    tune_allocator();
    agentguard::cli::main()
}

/// glibc's malloc raises its mmap and trim thresholds each time a large block is freed (up to
/// 32 and 64 MiB), and from then on keeps that much freed memory in every arena instead of
/// returning it. After watches list in pages of 5,000 objects that was about 25 MiB more RSS
/// at 100,000 claims (125 MiB instead of 98 MiB). A fixed mmap threshold turns the adjustment
/// off: blocks of 1 MiB and more (list pages) are mapped and unmapped, and the heap is trimmed
/// above glibc's default 128 KiB. The release image is static musl, whose allocator returns
/// memory on its own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
