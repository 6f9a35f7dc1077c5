// Reads a zip with java.util.zip.ZipInputStream, as the EdgeGallery app store does, and prints
// "name size sha256" for every entry. Exits non-zero on any error.
import java.io.*;
import java.security.MessageDigest;
import java.util.zip.*;

public class ReadZip {
    public static void main(String[] args) throws Exception {
        try (ZipInputStream zin = new ZipInputStream(new BufferedInputStream(new FileInputStream(args[0]), 1 << 20))) {
            ZipEntry e;
            byte[] buf = new byte[1 << 20];
            while ((e = zin.getNextEntry()) != null) {
                MessageDigest md = MessageDigest.getInstance("SHA-256");
                long n = 0;
                int r;
                while ((r = zin.read(buf)) > 0) { md.update(buf, 0, r); n += r; }
                StringBuilder hex = new StringBuilder();
                for (byte b : md.digest()) hex.append(String.format("%02x", b));
                System.out.println(e.getName() + " " + n + " " + hex);
            }
        }
    }
}
