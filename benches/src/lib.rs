//! Criterion benchmarks of paragen (see benches/).
