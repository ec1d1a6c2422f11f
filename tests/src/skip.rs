//! Honest skips. A test that cannot run here (no root, no kernel module, no nats-server)
//! calls [`skip`] and returns: the reason goes to stderr and, when `OM_SKIP_FILE` is set (the
//! test command sets it), to that file, so the closing summary counts it as skipped, not
//! passed. Libtest has no runtime skip; this is the project's substitute.

use std::io::Write;

/// Records that the calling test is skipped, and why.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED: {test}: {reason}");
    if let Ok(path) = std::env::var("OM_SKIP_FILE") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}

/// True when running as root (network namespaces need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
