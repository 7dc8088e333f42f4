//! afl-fuzz entry point; the body is [`bty_fuzz::catalog`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::catalog(data));
}
