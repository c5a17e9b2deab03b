fn main() {
    let mb: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let t = std::time::Instant::now();
    let m = rjs_harness::modules::slow_to_compile(mb << 20);
    eprintln!("generated {} bytes in {:?}", m.len(), t.elapsed());
    std::fs::write(std::env::args().nth(2).unwrap(), m).unwrap();
}
