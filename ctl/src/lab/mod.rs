//! QEMU labs: the machinery that boots Basalt images in QEMU (shared with the end-to-end
//! tests in basalt-tests-qemu) and the planning behind `basaltctl lab`.

pub mod accel;
pub mod console;
pub mod overlay;
pub mod plan;
pub mod qemu;
pub mod run;
pub mod state;
