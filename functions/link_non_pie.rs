//! Build script shared by every function crate (and the start-up floor in `bench/minimal-function`): links the
//! binary as a position-dependent executable.
//!
//! A position-independent executable is relocated by the dynamic loader at every start: for a function
//! linking the AWS SDK that is about 35,000 relocations over 590 KB of `.data.rel.ro`, each page of it
//! copied on write, which a profile of a cold start put at about a third of the time before the first
//! Runtime API poll. Linked at a fixed address the loader has about a hundred left to do. What is given up is
//! the randomised base of the executable's own code; its heap, stacks and shared libraries stay randomised,
//! and each Lambda execution environment runs one function in its own microVM.

fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
