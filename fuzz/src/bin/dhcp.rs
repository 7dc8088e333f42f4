//! afl-fuzz entry point; the body is [`bty_fuzz::dhcp`].
fn main() {
    afl::fuzz!(|data: &[u8]| bty_fuzz::dhcp(data));
}
