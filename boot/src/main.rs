//! `kernel8`: the Tessera image the firmware (or QEMU) boots.

#![no_std]
#![no_main]

use boot::BootConfig;
use kernel::serve::{Platform, run};

boot::entry!(main, BootConfig { fixed_seed: None, semihosting: false });

fn main(info: &'static boot::BootInfo) -> ! {
    let platform = Platform { console: boot::console::console() };
    run(&platform, info, core::hint::spin_loop)
}
