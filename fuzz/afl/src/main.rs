//! `dura-fuzz-afl TARGET`: runs the fuzz target TARGET (one of `--list`) under AFL++ in
//! persistent mode; `--seeds DIR` writes the seed corpora. Every allocation is bounded as in the stable driver, so an
//! unbounded one is a crash.

#[global_allocator]
static ALLOCATOR: dura_fuzz::alloc::Bounded = dura_fuzz::alloc::Bounded;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `--seeds DIR` writes the seed corpora (as `dura-fuzz seeds DIR`), `--list` the
    // targets' names, so that the long run needs no other build.
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--seeds", dir] => match dura_fuzz::seeds::write_all(std::path::Path::new(dir)) {
            Ok(_) => return,
            Err(error) => {
                eprintln!("dura-fuzz-afl: {error}");
                std::process::exit(1);
            }
        },
        ["--list"] => {
            for t in dura_fuzz::TARGETS {
                println!("{}", t.name);
            }
            return;
        }
        _ => {}
    }
    let name = args.first().cloned().unwrap_or_default();
    let Some(target) = dura_fuzz::target(&name) else {
        eprintln!("usage: dura-fuzz-afl TARGET | --list | --seeds DIR; targets:");
        for t in dura_fuzz::TARGETS {
            eprintln!("  {:<24} {}", t.name, t.what);
        }
        std::process::exit(64);
    };
    let index = dura_fuzz::TARGETS.iter().position(|t| t.name == target.name).unwrap_or(0);
    dura_fuzz::alloc::CONTEXT.set(index, 0, 0);
    afl::fuzz!(|data: &[u8]| {
        (target.run)(data);
    });
}
