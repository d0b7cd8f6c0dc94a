//! `zwarm-acp`: the ACP turn bridge (see `zwarm::acp::bridge`). zwarm starts it for each turn
//! of an ACP executor; it is not meant to be run by hand.

fn main() {
    std::process::exit(zwarm::acp::bridge::main())
}
