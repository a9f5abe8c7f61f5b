// The program of `opmas agents new NAME --template rust`, compiled here so
// that the template always builds against this SDK.
include!("../../src/templates/rust/main.rs");
