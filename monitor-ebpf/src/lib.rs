#![no_std]
// Library target so that aya-build can name this crate as a build dependency of `monitor`.
