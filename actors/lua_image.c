/*
 * lua_image.c — sl.image_info(path): an image's format and size from its
 * header (core/imageinfo), so a flow can refuse a decompression bomb before
 * tesseract or vips decode it. sl.max_image_pixels is the cap
 * (limits.max_image_pixels; 0: none).
 *
 *   local info, err = sl.image_info(path)
 *   -- info: {format = "png", width = W, height = H, pixels = W * H,
 *   --        max_pixels = limits.max_image_pixels (0: no cap)}
 *   -- err:  "unsupported" (not PNG/JPEG/GIF/WebP/TIFF/BMP), "bad_input"
 *   --       (a damaged header), "io" (the file cannot be read)
 *
 * It reads a few small blocks of a local file on the loop thread: a metadata-
 * sized cost, like the scratch dir's mkdir, not worth a thread hop.
 */
#include "actors/lua_api.h"

#include "core/config.h"
#include "core/err.h"
#include "core/imageinfo.h"

static int l_image_info(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    const char *path = luaL_checkstring(L, 1);
    sl_imageinfo_t info;
    int rc = sl_imageinfo_file(path, &info);
    if (rc != 0) {
        lua_pushnil(L);
        lua_pushstring(L, rc == SL_ENOTFOUND ? "unsupported"
                          : rc == SL_EINVAL  ? "bad_input"
                                             : sl_strerror(rc));
        return 2;
    }
    const sl_config_t *cfg = vm->host.cfg;
    lua_createtable(L, 0, 5);
    lua_pushstring(L, info.format);
    lua_setfield(L, -2, "format");
    lua_pushinteger(L, (lua_Integer)info.width);
    lua_setfield(L, -2, "width");
    lua_pushinteger(L, (lua_Integer)info.height);
    lua_setfield(L, -2, "height");
    lua_pushinteger(L, (lua_Integer)info.width * (lua_Integer)info.height);
    lua_setfield(L, -2, "pixels");
    lua_pushinteger(L, (lua_Integer)(cfg ? cfg->max_image_pixels : SL_CONFIG_MAX_IMAGE_PIXELS));
    lua_setfield(L, -2, "max_pixels");
    return 1;
}

void sl_lua_inject_image(lua_State *L, sl_flowvm_t *vm)
{
    const sl_config_t *cfg = vm->host.cfg;
    lua_pushinteger(L, (lua_Integer)(cfg ? cfg->max_image_pixels : SL_CONFIG_MAX_IMAGE_PIXELS));
    lua_setfield(L, -2, "max_image_pixels");
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_image_info, 1);
    lua_setfield(L, -2, "image_info");
}
