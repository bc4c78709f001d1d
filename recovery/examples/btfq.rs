fn main() {
    let a: Vec<String> = std::env::args().collect();
    let blob = std::fs::read(&a[1]).unwrap();
    let t = std::time::Instant::now();
    let btf = owvmm_recovery::btf::Btf::parse(&blob).unwrap();
    eprintln!("parsed {} types in {:?}", btf.type_count(), t.elapsed());
    for q in &a[2..] {
        let (s, p) = q.split_once(':').unwrap_or((q, ""));
        if p.is_empty() {
            println!(
                "{s}: id {:?} size {:?}",
                btf.struct_id(s),
                btf.struct_id(s).map(|i| btf.size_of(i))
            );
        } else {
            println!("{s}.{p}: {:?}", btf.member(s, p));
        }
    }
}
