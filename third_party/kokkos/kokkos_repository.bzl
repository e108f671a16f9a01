"""Repository rule that provides an installed Kokkos 3.4.1 + Kokkos Kernels 3.4.1.

The install comes from, in this order:
  1. $OPENMOE_KOKKOS_HOST_PREFIX / $OPENMOE_KOKKOS_CUDA_PREFIX (a pre-installed prefix with
     include/ and lib/ holding libkokkoscore.a, libkokkoscontainers.a, libkokkoskernels.a; a CUDA
     prefix also needs bin/nvcc_wrapper);
  2. build_kokkos.sh, which builds it once per machine into ~/.cache/openmoe-kokkos
     (or $OPENMOE_CACHE_DIR) from Debian's trilinos source package and reuses it afterwards.
"""

_ENV_CACHE = "OPENMOE_CACHE_DIR"

def _prefix_env(flavour):
    return "OPENMOE_KOKKOS_%s_PREFIX" % flavour.upper()

def _kokkos_repository_impl(rctx):
    flavour = rctx.attr.flavour
    prefix = rctx.os.environ.get(_prefix_env(flavour), "")
    if not prefix:
        script = rctx.path(rctx.attr._build_script)
        rctx.path(rctx.attr._patch)  # re-run this rule when the patch changes
        rctx.report_progress("building Kokkos 3.4.1 (%s) once for this machine" % flavour)
        result = rctx.execute(
            ["bash", str(script), "--flavour", flavour],
            timeout = 5400,
            quiet = False,
        )
        if result.return_code != 0:
            fail("Kokkos (%s) build failed (exit %d):\n%s" %
                 (flavour, result.return_code, result.stderr[-4000:]))
        for line in result.stdout.splitlines():
            if line.startswith("PREFIX="):
                prefix = line[len("PREFIX="):]
        if not prefix:
            fail("build_kokkos.sh printed no PREFIX= line:\n" + result.stdout)

    required = ["include/Kokkos_Core.hpp", "include/KokkosBlas3_gemm.hpp", "lib/libkokkoscore.a",
                "lib/libkokkoscontainers.a", "lib/libkokkoskernels.a"]
    if flavour == "cuda":
        required.append("bin/nvcc_wrapper")
    for f in required:
        if not rctx.path(prefix + "/" + f).exists:
            fail("Kokkos prefix %s (%s) lacks %s; set %s to a complete install or unset it" %
                 (prefix, flavour, f, _prefix_env(flavour)))

    rctx.symlink(prefix + "/include", "include")
    rctx.symlink(prefix + "/lib", "lib")
    if flavour == "cuda":
        rctx.symlink(prefix + "/bin", "bin")
    if flavour == "cuda":
        cuda_lib = rctx.os.environ.get("CUDA_HOME", "/usr/local/cuda") + "/lib64"
        linkopts = ["-L" + cuda_lib, "-Wl,-rpath," + cuda_lib, "-lcublas", "-lcublasLt",
                    "-lcudart_static", "-ldl", "-lrt", "-lpthread"]
    else:
        linkopts = ["-fopenmp", "-ldl"]
    rctx.template("BUILD.bazel", rctx.attr._build_template, {
        "%{flavour}": flavour,
        "%{prefix}": prefix,
        "%{linkopts}": repr(linkopts),
    }, executable = False)

kokkos_repository = repository_rule(
    implementation = _kokkos_repository_impl,
    attrs = {
        "flavour": attr.string(mandatory = True, values = ["host", "cuda"]),
        "_build_script": attr.label(default = Label("//third_party/kokkos:build_kokkos.sh")),
        "_patch": attr.label(default = Label("//third_party/kokkos:cuda13_sm90.patch")),
        "_build_template": attr.label(default = Label("//third_party/kokkos:kokkos.BUILD.tpl")),
    },
    environ = [_ENV_CACHE, "OPENMOE_KOKKOS_HOST_PREFIX", "OPENMOE_KOKKOS_CUDA_PREFIX", "CUDA_HOME"],
    local = False,
)
