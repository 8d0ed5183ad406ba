//! What runs beside the functions, never inside them: the local stand-ins for AWS ([`local`]) and the SAM
//! template's generator and deployment checks ([`infra`]), both working on one typed model of the template
//! ([`template`], read through [`cfn`]), the docs' lists that follow the registry ([`generated_docs`]), and the operator's [`status`] view. The `dualcaster` binary (`src/cli`) is the operator CLI, the demo
//! and the benchmarks built on them.

pub mod cfn;
pub mod generated_docs;
pub mod infra;
pub mod local;
pub mod marked_block;
pub mod status;
pub mod template;
