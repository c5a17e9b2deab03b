//! Misbehaving job: recurses without end. The sandbox must turn the stack overflow into a
//! trap, not a crash.

#![allow(unconditional_recursion)]

use std::hint::black_box;

/// Not tail-recursive (the result is used after the call) and each frame holds a black_box'd
/// array, so the optimiser can turn it neither into a loop nor into nothing.
#[allow(clippy::only_used_in_recursion)]
fn recurse(depth: u64) -> u64 {
    let mut frame = [0u8; 256];
    frame[(depth % 256) as usize] = depth as u8;
    let frame = black_box(frame);
    let below = recurse(black_box(depth + 1));
    below.wrapping_add(u64::from(frame[(below % 256) as usize]))
}

fn main() {
    eprintln!("evil-recurse: recursing forever");
    let r = recurse(0);
    println!("unreachable: {r}");
}
