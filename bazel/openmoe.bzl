"""Project build macros: one source file builds for the host backends and for CUDA.

openmoe_kokkos_library / openmoe_kokkos_test / openmoe_kokkos_binary wrap cc_* rules for
translation units that include Kokkos:
  - default (host): compiled by g++ with -fopenmp against @kokkos_host (OpenMP + Serial);
  - `--config=cuda`: each source is compiled by Kokkos' nvcc_wrapper (sm_90) into an object by
    the `nvcc_objects` rule below, and the objects are linked by g++ with cudart/cuBLAS.
Plain C++ that does not include Kokkos uses cc_library directly.
"""

OPENMOE_COPTS = ["-Wno-sign-compare"]

_HOST_KOKKOS_COPTS = ["-fopenmp"]

_NVCC_FLAGS = [
    "-std=c++17",
    "-O3",
    "-DNDEBUG",
    "-arch=sm_90",
    "-expt-extended-lambda",
    "--expt-relaxed-constexpr",
    "-Xcompiler",
    "-fPIC",
    "-Xcudafe",
    "--diag_suppress=esa_on_defaulted_function_ignored",
]

_CUDA_PATH = "/usr/local/cuda/bin:/usr/bin:/bin"

def _nvcc_objects_impl(ctx):
    cc_infos = [d[CcInfo].compilation_context for d in ctx.attr.deps if CcInfo in d]
    flags = list(_NVCC_FLAGS) + ["-I.", "-I" + ctx.bin_dir.path]
    for cc in cc_infos:
        flags += ["-D" + d for d in cc.defines.to_list()]
        flags += ["-I" + i for i in cc.includes.to_list()]
        flags += ["-I" + i for i in cc.quote_includes.to_list()]
        flags += ["-isystem " + i for i in cc.system_includes.to_list()]
    flags += ctx.attr.copts
    inputs = depset(
        ctx.files.srcs + ctx.files.hdrs,
        transitive = [cc.headers for cc in cc_infos],
    )
    objects = []
    for src in ctx.files.srcs:
        if src.extension not in ["cc", "cpp", "cu"]:
            continue
        obj = ctx.actions.declare_file("_nvcc/%s/%s.o" % (ctx.label.name, src.basename))
        args = ctx.actions.args()
        for f in flags:
            args.add_all(f.split(" ", 1))
        args.add("-c", src.path)
        args.add("-o", obj.path)
        ctx.actions.run(
            executable = ctx.file._nvcc_wrapper,
            arguments = [args],
            inputs = inputs,
            outputs = [obj],
            env = {"PATH": _CUDA_PATH, "NVCC_WRAPPER_DEFAULT_COMPILER": "g++", "HOME": "/tmp"},
            mnemonic = "NvccCompile",
            progress_message = "nvcc_wrapper (sm_90) %s" % src.short_path,
        )
        objects.append(obj)
    return [DefaultInfo(files = depset(objects))]

nvcc_objects = rule(
    implementation = _nvcc_objects_impl,
    doc = "Compiles Kokkos/CUDA translation units with nvcc_wrapper into object files.",
    attrs = {
        "srcs": attr.label_list(allow_files = True),
        "hdrs": attr.label_list(allow_files = True),
        "deps": attr.label_list(providers = [CcInfo]),
        "copts": attr.string_list(),
        "_nvcc_wrapper": attr.label(
            default = Label("//third_party/kokkos:nvcc_wrapper"),
            allow_single_file = True,
        ),
    },
)

def openmoe_kokkos_library(name, srcs = [], hdrs = [], deps = [], copts = [], **kwargs):
    """A cc_library whose sources include Kokkos; builds for host or CUDA per `--config`."""
    all_deps = deps + ["//third_party/kokkos"]
    cc_srcs = [s for s in srcs if not s.endswith(".h")]
    private_hdrs = [s for s in srcs if s.endswith(".h")]
    if cc_srcs:
        nvcc_objects(
            name = name + "_nvcc",
            srcs = cc_srcs,
            hdrs = hdrs + private_hdrs,
            deps = all_deps,
            tags = ["manual"],
            testonly = kwargs.get("testonly", False),
            visibility = ["//visibility:private"],
        )
        srcs = select({
            "//:cuda": [":" + name + "_nvcc"] + private_hdrs,
            "//conditions:default": srcs,
        })
    native.cc_library(
        name = name,
        srcs = srcs,
        hdrs = hdrs,
        deps = all_deps,
        copts = OPENMOE_COPTS + _HOST_KOKKOS_COPTS + copts,
        linkopts = select({
            "//:cuda": [],
            "//conditions:default": ["-fopenmp"],
        }),
        **kwargs
    )

def _kokkos_main_target(name, srcs, deps, kind, **kwargs):
    lib_kwargs = {"testonly": kwargs.get("testonly", kind == "test")}
    openmoe_kokkos_library(
        name = name + "_lib",
        srcs = srcs,
        deps = deps,
        alwayslink = True,
        visibility = ["//visibility:private"],
        **lib_kwargs
    )
    rule = native.cc_test if kind == "test" else native.cc_binary
    rule(
        name = name,
        deps = [":" + name + "_lib"],
        linkstatic = True,
        **kwargs
    )

def openmoe_kokkos_test(name, srcs, deps = [], **kwargs):
    """A cc_test over Kokkos code; under `--config=cuda` it runs on the Cuda backend."""
    _kokkos_main_target(name, srcs, deps, "test", **kwargs)

def openmoe_kokkos_binary(name, srcs, deps = [], **kwargs):
    """A cc_binary over Kokkos code; under `--config=cuda` it runs on the Cuda backend."""
    _kokkos_main_target(name, srcs, deps, "binary", **kwargs)
