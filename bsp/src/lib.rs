//! Tessera board support: the AArch64 architecture layer and the Raspberry Pi boards.
//!
//! Drivers implement the `kernel::hil` traits, and the kernel is reached through `hil` alone
//! (a test checks); pure logic (translation tables, syndrome decoding, budget rows) is tested
//! on the host. `bsp` never makes a policy decision: the kernel's layout planner decides how
//! RAM is split, `bsp` says what the board has.

#![cfg_attr(not(test), no_std)]

pub mod arch;
pub mod board;
pub mod mmio;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// A path into the kernel crate, and the one module such a path may name (spelled in two
    /// halves, so that this file does not name them itself).
    const KERNEL: &str = concat!("kernel", "::");
    const HIL: &str = concat!("kernel", "::hil");

    /// Every kernel path in bsp's code (comments aside) is under `kernel::hil`.
    fn kernel_paths_outside_hil(directory: &Path, found: &mut Vec<String>) {
        for entry in std::fs::read_dir(directory).expect("bsp/src is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                kernel_paths_outside_hil(&path, found);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("a source file");
            for (number, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or_default();
                let mut rest = code;
                while let Some(at) = rest.find(KERNEL) {
                    if !rest[at..].starts_with(HIL) {
                        found.push(format!("{}:{}: {}", path.display(), number + 1, line.trim()));
                    }
                    rest = &rest[at + KERNEL.len()..];
                }
            }
        }
    }

    #[test]
    fn bsp_reaches_the_kernel_only_through_hil() {
        let mut found = Vec::new();
        kernel_paths_outside_hil(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        assert!(found.is_empty(), "bsp names kernel modules other than hil:\n{}", found.join("\n"));
    }
}
