//! afl-fuzz entry point; the body is [`bty_fuzz::qcow2`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::qcow2(data));
}
